"""An example pywren backend: objects in a folder, every invocation a fresh Python process."""
