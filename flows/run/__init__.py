"""A run: its context and the shot as one object (send, complete, download, settle ->
a typed outcome), early submits, the run lock, reconcile, the one finish (cut, reports,
review page), the up-to-date check, and run folders that can move. Nothing here imports
Prefect (flows/orchestration does). Kept empty: the up-to-date check imports only what it
needs."""
