"""ml_collections config files: the recipe, runnable and readable."""
