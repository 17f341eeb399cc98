"""The page and its API: layout, events, views, and what Gradio needs fixed."""
