"""The entrypoint that deployments registered before the flow moved to
flows/orchestration/flow.py (`flows/pipeline.py:render_storyboard`): kept so they still run.
New deployments name flows/orchestration/flow.py:render_storyboard."""

from flows.orchestration.flow import render_storyboard

__all__ = ["render_storyboard"]
