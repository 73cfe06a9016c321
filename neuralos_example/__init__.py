"""A miniature NeuralOS: a diffusion model that draws a desktop frame by frame from mouse and keyboard input.

``neuralos_example.simulator`` is the small deterministic desktop it learns from: it renders the
true frames for a sequence of actions, produces training transitions, and scripts users doing
frequent tasks ("create a folder and name it", "open the browser and wait for the page").
"""
