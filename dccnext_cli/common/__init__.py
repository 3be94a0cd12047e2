"""What both task families share and neither owns: atomic files, device choice, progress, recipe files.

Nothing here knows about models or tasks; everything above may import it.
"""
