"""pywren backend for MyCloud."""
