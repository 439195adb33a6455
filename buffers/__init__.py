"""hilrl.buffers."""
