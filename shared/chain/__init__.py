"""Reading the chain: the JSON-RPC client (shared/chain/rpc.py, batches, failover, error classes)
and the log poller that executors register filters and sinks with (poller.py states its
guarantees; filters.py what a filter and a sink are)."""
