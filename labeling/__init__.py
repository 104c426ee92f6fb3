"""The loop back: the queue of images worth a label, the simulated annotator, and accuracy estimated with few labels."""
