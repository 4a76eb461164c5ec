"""Platform: where JAX runs (devices), how devices form a mesh, and start-up costs."""
