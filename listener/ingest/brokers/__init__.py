"""The brokers a queue source reads (listener.ingest.queues): one module per client, each imported only
when a ``queues:`` entry uses it.  Each implements :class:`listener.ingest.queues.Broker`."""
