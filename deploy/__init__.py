"""hilrl.deploy."""
