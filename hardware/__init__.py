"""hilrl.hardware."""
