"""Worker agents: the Celery task entry, workspaces, the agent loop, tools and publishing."""
