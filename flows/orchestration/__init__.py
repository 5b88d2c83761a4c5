"""The Prefect side: the flow that runs a storyboard (flow.py) and storyreel's background
Prefect server (server.py). The only room that imports prefect."""
