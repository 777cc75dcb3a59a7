"""Screenshots of the feature browser for docs/visualisation.md: the shipped shapes ViT and SAE over 1000
held-out shape images written as an image folder, opened from file:// in headless Chromium (Debian's
``chromium``) with the DevTools client of the test suite.

    python scripts/site_screenshots.py [--out docs/images]
"""

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from vit_sae_hooks import SAE, HookedViT
from vit_sae_hooks.data import shapes
from vit_sae_hooks.demo.build import MODEL_NAME, SAE_NAME
from vit_sae_hooks.demo.classifier import TEST_SEED
from vit_sae_hooks.viz import build_site
from vit_sae_hooks.viz.site.files import FEATURES_PER_SHARD, MAP_ALPHABET, shard_key

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers.browser import chromium, chromium_path  # noqa: E402
from helpers.site import read_data  # noqa: E402

TOP = 12

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--out", default=str(ROOT / "docs" / "images"))
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
work = Path(tempfile.mkdtemp(prefix="site_screenshots_"))
shapes.save_images(shapes.make_batch(1000, seed=TEST_SEED + 1), work / "shapes")
model, sae = HookedViT.from_pretrained(MODEL_NAME).eval(), SAE.from_pretrained(SAE_NAME).eval()
site = build_site(model, sae, work / "shapes", work / "site", top=TOP, num_workers=0, sae_name=SAE_NAME)


def feature_and_names(feature: int) -> tuple[dict, dict]:
    shard = read_data(site.folder, shard_key("features", feature // FEATURES_PER_SHARD))
    return shard["features"][feature % FEATURES_PER_SHARD], shard["images"]


def one_class(feature: int) -> bool:
    record, names = feature_and_names(feature)
    classes = Counter(names[str(image)][0].split("/")[0] for image in record["images"])
    return len(record["images"]) == TOP and len(classes) == 1


# Show the most frequent feature whose top images all share one class, then the image view of its best image
# on the patch where it fires most.
frequency = read_data(site.folder, "summary")["image_frequency"]
feature = max((f for f in range(sae.d_sae) if frequency[f] > 0 and one_class(f)), key=lambda f: frequency[f])
record, _ = feature_and_names(feature)
patch = max(range(len(record["maps"][0])), key=lambda p: MAP_ALPHABET.index(record["maps"][0][p]))
views = {"index": "", "feature": f"#feature={feature}", "image": f"#image={record['images'][0]}&token={1 + patch}"}
with chromium(chromium_path(), work) as browser:
    for name, fragment in views.items():
        ready = f"document.body.dataset.state === 'ready' && document.body.dataset.route === '{fragment}'"
        browser.open(site.url + fragment, ready)
        print(browser.screenshot(out / f"browser-{name}.png"))
    assert browser.errors() == [], browser.errors()
