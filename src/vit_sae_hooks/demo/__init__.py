"""The offline demo: the shapes ViT and SAE shipped with the package, how they are built, and `vit-sae demo`."""
