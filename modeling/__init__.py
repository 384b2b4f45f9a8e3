"""Method families, one sub-package each (HF naming). Imported as ``hf_ssl.modeling``."""
