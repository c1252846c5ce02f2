"""The end-to-end demo: generate, archive, train, register, serve (one worker killed), score; report."""
