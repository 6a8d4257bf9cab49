"""Parts shared by the coordinator and the workers: settings, state, queues, forges."""
