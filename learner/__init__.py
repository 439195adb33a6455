"""hilrl.learner."""
