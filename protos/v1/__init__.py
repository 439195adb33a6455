"""Generated wire code for protocol hilrl.v1 (do not edit; see protos/generate.py)."""
