"""One job from request to video: its steps, the runner that waits, the poller, slots, inputs, images."""
