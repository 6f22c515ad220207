"""The demo page (srn_hf.app) served on a free local port and driven in a real headless Chromium through selenium.

Debian's chromium and chromium-driver (examples/setup_env.sh installs them with the app extra). The model is a
small real SRN (random weights) whose classifier biases are fixed, so that its scores are far apart and the threshold
slider has labels on both sides of it; what the page shows is checked against the multi-label pipeline run here.
"""

import io
import json
import socket
import tempfile
import urllib.request
from urllib.parse import urlparse

import datasets
import numpy as np
import pytest
import skimage.data
import torch
from helpers import save_with_processor, small_srn
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from transformers import pipeline

from srn_hf.app import attention_overlay, build_app, predict
from srn_hf.pipeline_srn import TASK
from srn_hf.showcase import keep_examples

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
LABELS = ["bird", "boat", "car", "cattle", "flower"]
BIASES = [3.0, 1.5, 0.4, -1.0, -3.0]  # fused logits y of about these: scores 0.95, 0.82, 0.60, 0.27, 0.05
CALIBRATED = {"boat": 0.8}  # a calibrated threshold: boat is predicted at 0.82, and no longer once it moves up
MOVED_THRESHOLD = 0.65  # the slider moved by +0.15: bird (0.95 > 0.65) stays; boat (> 0.95?) and car (> 0.65?) go
WAIT = 60


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = small_srn(dict(enumerate(LABELS)), image_size=128, label_thresholds=CALIBRATED)
    with torch.no_grad():
        model.srn.classifier.bias.copy_(torch.tensor(BIASES) / model.config.alpha)
        model.srn.attention.conv3.weight.mul_(30)  # peaked attention maps A (random ones, but not flat)
    run = tmp_path_factory.mktemp("app")  # OUTPUT_DIR of a training run: final/ and the kept test images
    photo = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(photo, format="PNG")
    test_split = datasets.Dataset.from_dict(
        {"image": [{"bytes": photo.getvalue(), "path": None}], "image_id": ["cup-1"], "labels": [[0, 2]]},
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "image_id": datasets.Value("string"),
                "labels": datasets.Sequence(datasets.ClassLabel(names=LABELS)),
            }
        ),
    )
    keep_examples(test_split, "test", LABELS, run)
    return save_with_processor(model, run / "final")


@pytest.fixture
def served(model_dir, tmp_path, monkeypatch):
    """The page at http://127.0.0.1:PORT/, served in this process (Gradio's server thread)."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = build_app(model_dir)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1500",
    ):
        options.add_argument(argument)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def shown_labels(driver) -> list[tuple[str, str]]:
    """(label, percentage) of each bar in the label list, top to bottom."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#srn-labels .confidence-set'),"
        " row => [row.querySelector('dt').textContent, row.querySelector('dd').textContent]);"
    )  # in one go: the page redraws the list while it is read
    return [(label.strip(), percentage.strip()) for label, percentage in rows]


def wait_for(driver, condition, message):
    return WebDriverWait(driver, WAIT).until(lambda _: condition(), message=message)


NOT_CLICKABLE_YET = (ElementNotInteractableException, ElementClickInterceptedException, StaleElementReferenceException)


def click_when_ready(driver, selector: str, by: str = By.CSS_SELECTOR) -> None:
    """Clicks the element once the page lets a user click it: present, laid out and not covered (on a loaded
    machine Gradio may still be drawing the examples when their images are already in the page)."""

    def click(_):
        element = driver.find_element(by, selector)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        element.click()
        return True

    WebDriverWait(driver, WAIT, ignored_exceptions=NOT_CLICKABLE_YET).until(
        click, message=f"{selector} never became clickable"
    )


def test_upload_threshold_attention_map_and_bad_upload_in_chromium(served, browser, model_dir, tmp_path):
    demo, url = served
    image_file = tmp_path / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(image_file)
    tagger = pipeline(TASK, model=model_dir)
    expected = tagger(str(image_file))  # the labels above the model's own thresholds
    scores = {item["label"]: item["score"] for item in tagger(str(image_file), threshold=0.0)}
    model_thresholds = dict(zip(LABELS, tagger.thresholds()))
    assert [item["label"] for item in expected] == ["bird", "boat", "car"]  # the fixed biases do what they should

    browser.get(url)
    upload = WebDriverWait(browser, WAIT).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#srn-image input[type=file]")
    )
    slider = browser.find_element(By.CSS_SELECTOR, "#srn-threshold input[type=number]")
    assert float(slider.get_attribute("value")) == 0.5  # the config's threshold: every label at its model threshold

    # Upload: the labels shown are the pipeline's, best first, with their scores.
    upload.send_keys(str(image_file))
    wait_for(browser, lambda: shown_labels(browser), "no label shown after the upload")
    assert shown_labels(browser) == [(item["label"], f"{round(item['score'] * 100)}%") for item in expected]
    status = browser.find_element(By.ID, "srn-status").text
    assert "3 of 5 labels above their thresholds" in status and "predicted in" in status and " ms on cpu" in status

    # The threshold moved up by 0.15: every label's threshold moves with it, and the list shrinks.
    slider.clear()
    slider.send_keys(str(MOVED_THRESHOLD), Keys.ENTER)
    moved = [label for label in LABELS if scores[label] > model_thresholds[label] + MOVED_THRESHOLD - 0.5]
    assert moved == ["bird"]
    wait_for(browser, lambda: [label for label, _ in shown_labels(browser)] == moved, "the threshold changed nothing")

    # Back to 0.5, then a click on car shows car's attention map over the image.
    slider.clear()
    slider.send_keys("0.5", Keys.ENTER)
    wait_for(browser, lambda: len(shown_labels(browser)) == 3, "the labels did not come back")
    browser.find_element(By.CSS_SELECTOR, '#srn-labels [data-testid="car-confidence-set"]').click()
    caption = f"Attention map A of car ({scores['car']:.2f})"
    attention_label = (By.CSS_SELECTOR, '#srn-attention [data-testid="block-label"]')
    wait_for(browser, lambda: browser.find_element(*attention_label).text == caption, "no attention map of car")
    source = browser.find_element(By.CSS_SELECTOR, "#srn-attention img").get_attribute("src")
    with urllib.request.urlopen(source) as response:
        shown_map = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"), dtype=np.float32)
    drawn = np.asarray(attention_overlay(predict(tagger, str(image_file)), "car"), dtype=np.float32)
    assert shown_map.shape == drawn.shape and np.abs(shown_map - drawn).max() <= 1  # a PNG: the same pixels
    browser.save_screenshot(str(tmp_path / "demo_page.png"))

    # A truncated PNG is refused with a message naming it; the labels are cleared.
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(image_file.read_bytes()[:400])
    browser.find_element(By.CSS_SELECTOR, "#srn-image input[type=file]").send_keys(str(truncated))
    wait_for(browser, lambda: "Refused: truncated.png" in browser.find_element(By.ID, "srn-status").text, "not refused")
    assert not shown_labels(browser)

    def toasts():
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('[data-testid=\"toast-body\"]'), toast => toast.textContent);"
        )

    wait_for(browser, lambda: any("truncated.png" in toast for toast in toasts()), "no message about the upload")
    assert any("truncated or corrupt" in toast for toast in toasts()), toasts()
    browser.save_screenshot(str(tmp_path / "demo_page_refused.png"))

    # Offline: every request of the page went to the app itself, none to a CDN, font or analytics server.
    hosts = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            request_url = urlparse(message["params"]["request"]["url"])
            if request_url.scheme in ("http", "https", "ws", "wss"):
                hosts.add(request_url.netloc)
    assert hosts == {urlparse(url).netloc}
    assert demo.analytics_enabled is False
    with Image.open(tmp_path / "demo_page.png") as screenshot:
        assert screenshot.format == "PNG" and screenshot.size[0] >= 1000


def test_an_example_click_predicts_it(served, browser):
    """The examples: the run's own test images, captioned with their true labels."""
    _, url = served
    browser.get(url)
    click_when_ready(browser, "//button[normalize-space(.)='true: bird, car']", By.XPATH)  # captioned with its truth
    wait_for(browser, lambda: "predicted in" in browser.find_element(By.ID, "srn-status").text, "example not predicted")
    assert [label for label, _ in shown_labels(browser)] == ["bird", "boat", "car"]
