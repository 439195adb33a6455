"""hilrl.actor."""
