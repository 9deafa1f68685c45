"""HF/diffusers safetensors <-> Orbax conversion: declarative key tables (table.py), one module per model, the
import/export pipeline, and streaming safetensors I/O. `python -m convert` is the command line."""
