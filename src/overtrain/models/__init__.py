"""Language-model presets built from Hugging Face configs."""
