"""Feature visualisation: top-activating images and patches over a dataset, per-patch heatmaps, feature cards,
and a static feature browser (``build_site``) that opens from disk.

Example:
    >>> from vit_sae_hooks.viz import top_activating, plot_feature_card
    >>> top = top_activating(model, sae, loader, features=[3, 17], k=16)
    >>> plot_feature_card(top, 17, unnormalize=preprocess_for(model), path="feature_17.png")
"""

from vit_sae_hooks.viz.figures import displayable_image, plot_feature_card, plot_heatmap, plot_top_images
from vit_sae_hooks.viz.heatmap import feature_heatmap, patch_maps, token_activations
from vit_sae_hooks.viz.site import Site, build_site
from vit_sae_hooks.viz.top_activating import TopActivations, top_activating

__all__ = [
    "Site",
    "TopActivations",
    "build_site",
    "displayable_image",
    "feature_heatmap",
    "patch_maps",
    "plot_feature_card",
    "plot_heatmap",
    "plot_top_images",
    "token_activations",
    "top_activating",
]
