"""The feature browser in a real browser: Debian's headless Chromium opens the site from file://, and the
rendered DOM is checked against viz.top_activating and the SAE's own activations; no JavaScript error, and no
request leaves the site folder. A 65536-feature site shows that the index renders only the rows on screen
and that a feature view loads one shard."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from vit_sae_hooks import SAE, HookedViT, SAEConfig
from vit_sae_hooks.data import ImageFolder, shapes
from vit_sae_hooks.demo.build import MODEL_NAME, SAE_NAME
from vit_sae_hooks.viz import build_site, top_activating

from helpers.browser import Browser, chromium, chromium_path
from helpers.site import read_data

CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)"
)
TOP = 6


@pytest.fixture(scope="module")
def shapes_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    shapes.save_images(shapes.make_batch(60, seed=9), root)
    model = HookedViT.from_pretrained(MODEL_NAME).eval()
    sae = SAE.from_pretrained(SAE_NAME).eval()
    site = build_site(model, sae, root, tmp_path_factory.mktemp("site") / "site", top=TOP, num_workers=0,
                      sae_name=SAE_NAME, progress=False)
    return site, root, model, sae


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(CHROMIUM, tmp_path_factory.mktemp("chromium")) as browser:
        yield browser


def _open(browser: Browser, site_folder: Path, fragment: str) -> None:
    url = (site_folder / "index.html").resolve().as_uri() + fragment
    browser.open(url, f"document.body.dataset.state === 'ready' && document.body.dataset.route === {json.dumps(fragment)}")


def _dom(browser: Browser, selector: str, value: str = "node.textContent") -> list:
    return browser.evaluate(f"[...document.querySelectorAll({json.dumps(selector)})].map((node) => {value})")


def _check_clean(browser: Browser, site_folder: Path, first_request: int = 0) -> None:
    """No JavaScript or console error so far, and every request from ``first_request`` on was a file inside
    the site folder."""
    assert browser.errors() == []
    inside = site_folder.resolve().as_uri() + "/"
    requests = browser.requests()[first_request:]
    assert requests and all(url.startswith(inside) for url in requests), [u for u in requests if not u.startswith(inside)]


def _feature_record(folder: Path, feature: int) -> dict:
    for path in sorted((folder / "data" / "features").glob("*.js")):
        for record in read_data(folder, f"features/{path.stem}")["features"]:
            if record["id"] == feature:
                return record
    raise AssertionError(f"feature {feature} is not in the site's data")


def _all_acts(model, sae, root) -> torch.Tensor:
    folder = ImageFolder(root, transform=shapes.preprocess())
    images = torch.stack([folder[i][0] for i in range(len(folder))])
    _, cache = model.run_with_cache(images, names_filter=[sae.hook_name])
    return sae.encode(cache[sae.hook_name]).detach()


def test_feature_view_shows_the_top_images_in_order(shapes_site, browser, tmp_path):
    site, root, model, sae = shapes_site
    first_request = len(browser.requests())
    assert json.loads((site.folder / "vit-sae-site.json").read_text())["n_images"] == 60
    folder = ImageFolder(root)
    names = [path.relative_to(root).as_posix() for path, _ in folder.samples]
    top = top_activating(model, sae, root, list(range(sae.d_sae)), k=TOP, num_workers=0, keep_images=False, progress=False)
    frequent = int((top.scores > 0).sum(1).argmax())  # a feature with a full row of top images
    rare = int(((top.scores > 0).sum(1) == 2).nonzero()[0])  # and one that fired on two images only
    for feature in (frequent, rare):
        _open(browser, site.folder, f"#feature={feature}")
        positive = top.scores[feature] > 0
        expected = [names[index] for index in top.image_indices[feature][positive].tolist()]
        assert _dom(browser, ".top-images .image-name") == expected
        shown = [float(text) for text in _dom(browser, ".top-images .score")]
        assert shown == pytest.approx(top.scores[feature][positive].tolist(), rel=2e-3)
        assert _dom(browser, ".top-images .heat", "node.children.length") == [16] * len(expected)  # 4x4 patches
        assert browser.evaluate("document.querySelector('h1').textContent").startswith(f"Feature {feature}")
        classes = _dom(browser, ".class-bars .hbar", "node.dataset.class")
        assert sorted(classes) == sorted({name.split("/")[0] for name in expected})
        assert len(_dom(browser, ".similar a")) == 8
        # The activation histogram has a bar per bin of the feature's data, and the CLS-versus-patch table the
        # share of each kind's tokens it fires on, recomputed here from the encoded activations.
        record = _feature_record(site.folder, feature)
        assert len(_dom(browser, "svg.chart rect.bar")) == len(record["histogram"][1])
        kinds = dict(zip(_dom(browser, ".plain tr[data-kind]", "node.dataset.kind"),
                         _dom(browser, ".plain tr[data-kind] td:nth-child(2)"), strict=True))
        assert set(kinds) == {"cls", "patch"}
        acts = _all_acts(model, sae, root)[..., feature]
        for kind, positions in (("cls", slice(0, 1)), ("patch", slice(1, None))):
            share = 100 * float((acts[:, positions] > 0).float().mean())
            assert float(kinds[kind].rstrip("%")) == pytest.approx(share, rel=2e-3, abs=1e-9), (feature, kind)
    browser.screenshot(tmp_path / "feature.png")
    _open(browser, site.folder, "#feature=5000")
    assert browser.evaluate("document.querySelector('.error').textContent") == (
        "feature 5000 is not in this site (it shows 512 features)")
    _check_clean(browser, site.folder, first_request)


def test_image_view_lists_the_features_of_a_patch(shapes_site, browser):
    site, root, model, sae = shapes_site
    first_request = len(browser.requests())
    image, patch = 7, 5
    folder = ImageFolder(root, transform=shapes.preprocess())
    _, cache = model.run_with_cache(folder[image][0][None], names_filter=[sae.hook_name])
    acts = sae.encode(cache[sae.hook_name][0]).detach()  # [17 tokens, 512]

    def expected(position: int) -> list[int]:
        values, order = acts[position].sort(descending=True, stable=True)
        return order[values > 0][:16].tolist()

    position = 1 + patch  # after the CLS token
    _open(browser, site.folder, f"#image={image}&token={position}")
    assert _dom(browser, ".token-features tr[data-feature]", "Number(node.dataset.feature)") == expected(position)
    assert browser.evaluate("document.querySelector('h1').textContent").startswith(
        folder.samples[image][0].relative_to(root).as_posix())
    assert _dom(browser, ".patches button[aria-pressed='true']", "Number(node.dataset.token)") == [position]
    # Choosing another patch on the page lists that token's features.
    browser.evaluate("document.querySelector('.patches button[data-token=\"12\"]').click()")
    browser.wait(f"document.body.dataset.route === '#image={image}&token=12' && document.body.dataset.state === 'ready'")
    assert _dom(browser, ".token-features tr[data-feature]", "Number(node.dataset.feature)") == expected(12)
    _open(browser, site.folder, f"#image={image}&token=0")
    assert _dom(browser, ".token-features tr[data-feature]", "Number(node.dataset.feature)") == expected(0)
    _check_clean(browser, site.folder, first_request)


def test_index_sorts_searches_and_lists_dead_features(shapes_site, browser):
    site, _, _, _ = shapes_site
    summary = read_data(site.folder, "summary")
    live = [f for f, frequency in enumerate(summary["image_frequency"]) if frequency > 0]
    first_request = len(browser.requests())
    _open(browser, site.folder, "")
    rows = _dom(browser, ".vrow", "Number(node.dataset.feature)")
    by_frequency = sorted(live, key=lambda f: (-summary["image_frequency"][f], f))
    assert rows == by_frequency[: len(rows)] and 10 < len(rows) < len(live)  # only the rows on screen
    assert browser.evaluate("document.getElementById('match-count').textContent") == f"{len(live)} of {len(live)} live features"
    browser.evaluate("document.querySelector('.table-head button[data-key=\"max\"]').click()")
    rows = _dom(browser, ".vrow", "Number(node.dataset.feature)")
    assert rows == sorted(live, key=lambda f: (-summary["max"][f], f))[: len(rows)]
    browser.evaluate("const box = document.querySelector('.controls input'); box.value = 'ring'; "
                     "box.dispatchEvent(new Event('input'))")
    ring = [f for f in live if summary["label_names"][summary["label"][f]] == "ring"]
    rows = _dom(browser, ".vrow", "Number(node.dataset.feature)")
    assert rows == sorted(ring, key=lambda f: (-summary["max"][f], f))[: len(rows)] and rows
    assert browser.evaluate("document.getElementById('match-count').textContent") == f"{len(ring)} of {len(live)} live features"
    # Searching by id keeps the features whose id starts with what is typed.
    browser.evaluate("{ const box = document.querySelector('.controls input'); box.value = '4'; "
                     "box.dispatchEvent(new Event('input')); }")
    by_id = [f for f in live if str(f).startswith("4")]
    rows = _dom(browser, ".vrow", "Number(node.dataset.feature)")
    assert rows == sorted(by_id, key=lambda f: (-summary["max"][f], f))[: len(rows)] and rows
    assert browser.evaluate("document.getElementById('match-count').textContent") == f"{len(by_id)} of {len(live)} live features"
    # Dead features are listed apart, consecutive ids as one range.
    dead = [f for f, frequency in enumerate(summary["image_frequency"]) if frequency == 0]
    ranges = []
    for feature in dead:
        if ranges and ranges[-1][1] == feature - 1:
            ranges[-1][1] = feature
        else:
            ranges.append([feature, feature])
    assert _dom(browser, "#dead-features a") == [f"#{a}" if a == b else f"#{a}–{b}" for a, b in ranges]
    assert len(dead) == site.n_dead
    assert len(_dom(browser, "svg.chart rect.bar")) > 5  # the density histogram
    _check_clean(browser, site.folder, first_request)


def test_65536_features_open_fast_and_lazily(tmp_path, browser):
    torch.manual_seed(0)
    from vit_sae_hooks import HookedViTConfig

    model = HookedViT(HookedViTConfig(n_layers=1, d_model=32, n_heads=4, d_mlp=64, image_size=16, patch_size=4)).eval()
    sae = SAE(SAEConfig(d_in=32, d_sae=65536, architecture="topk", k=256, hook_name="blocks.0.hook_resid_post")).eval()
    images = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    site = build_site(model, sae, images, tmp_path / "site", top=4, similar=0, progress=False)
    first_request = before = len(browser.requests())
    start = time.monotonic()
    _open(browser, site.folder, "")
    assert time.monotonic() - start < 10
    loaded = [url.rsplit("/", 2)[-2:] for url in browser.requests()[before:]]
    assert ["data", "summary.js"] in loaded and not any(part[0] == "features" for part in loaded)
    live = site.n_features - site.n_dead
    assert browser.evaluate("document.getElementById('match-count').textContent") == f"{live} of {live} live features"
    assert len(_dom(browser, ".vrow")) < 100
    # Scrolling to the end renders the last rows, and still only those.
    browser.evaluate("const list = document.getElementById('feature-list'); list.scrollTop = list.scrollHeight; "
                     "list.dispatchEvent(new Event('scroll')); new Promise((done) => requestAnimationFrame(() => done()))")
    time.sleep(0.2)
    assert len(_dom(browser, ".vrow")) < 100
    last_row = browser.evaluate("[...document.querySelectorAll('.vrow')].at(-1).style.top")
    assert float(last_row.removesuffix("px")) == pytest.approx((live - 1) * 26)
    before = len(browser.requests())
    _open(browser, site.folder, "#feature=65535")
    loaded = [url.rsplit("/", 2)[-2:] for url in browser.requests()[before:]]
    assert ["features", "01023.js"] in loaded and sum(part[0] == "features" for part in loaded) == 1
    _check_clean(browser, site.folder, first_request)
