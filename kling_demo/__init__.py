"""Kling 2.0 image-to-video demo: a Gradio app over the WaveSpeedAI API, with a local sandbox."""

__version__ = "0.1.0"
