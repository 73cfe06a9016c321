"""Built-in example tasks that need no download."""
