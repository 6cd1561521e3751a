"""Scale-out on Ray: one server queue, many workers, prompts routed to the worker whose models are hot.

`diffgraph serve --executor ray` keeps the server (HTTP API, WebSocket, SQLite queue and history) in one
process and runs prompts on Ray actors, each a full diffgraph runtime with its own model manager and
output cache (docs/scale-out.md). Ray is an optional extra (`pip install diffgraph[ray]`): nothing in
this package imports it at module level, only the functions that talk to a cluster do.

- router.py: which idle worker gets a prompt (pure Python)
- relay.py: per-client ordering of the WebSocket messages relayed from the workers (pure Python)
- outputs.py: output files shipped from a worker's staging folder into the server's folders
- actor.py: the worker actor's body (a runtime executing prompts, streaming events back)
- pool.py: the actors on a Ray cluster, their readiness, death and return
- queue.py: the server's prompt queue dispatching to the pool (a PromptQueue subclass)
"""
