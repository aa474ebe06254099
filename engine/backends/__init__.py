"""In-process torch backends (eager, torch.compile) behind ``engine.backends.base.Backend``."""
