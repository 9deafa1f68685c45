"""Weight converters: HF/diffusers safetensors <-> Orbax (`python -m convert --help`)."""
