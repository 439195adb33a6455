"""hilrl.protos."""
