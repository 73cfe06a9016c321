"""Ready-made apps on top of ray_interactive: the Gradio control UI (:mod:`apps.control_ui`)."""
