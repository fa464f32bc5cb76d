"""``big-vision-hf app``: the demo's model side for each folder kind, and the page in a real headless browser
(Debian's Chromium driven by Selenium): upload an image, submit, check what is rendered."""

from __future__ import annotations

import os
import shutil
import socket
import time

import numpy as np
import pytest
from PIL import Image
from tiny_folders import paligemma_folder, siglip_folder, vit_folder

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    return {"paligemma": paligemma_folder(root), "siglip": siglip_folder(root)[0], "vit": vit_folder(root)}


def _image(seed=0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (40, 50, 3), dtype=np.uint8))


def test_predictors(folders):
    from big_vision_hf.app import folder_kind, paligemma_prompt, predictor

    assert [folder_kind(folders[k]) for k in ("paligemma", "siglip", "vit")] == ["paligemma", "zero-shot",
                                                                                "classification"]
    assert paligemma_prompt("answer", " how many? ") == "answer en how many?"
    assert paligemma_prompt("detect", "cat ; dog") == "detect cat ; dog"
    _, fn = predictor(folders["paligemma"])
    text, drawn = fn(_image(), "detect", "cat")
    assert isinstance(text, str) and drawn.size == _image().size
    _, fn = predictor(folders["siglip"])
    scores = fn(_image(), "a cat, a dog, a big red car")
    assert list(scores) and set(scores) == {"a cat", "a dog", "a big red car"}
    assert all(0 < s < 1 for s in scores.values())  # sigmoid scores, each on its own
    _, fn = predictor(folders["vit"])
    top = fn(_image())
    assert len(top) == 5 and all(k.startswith("class ") for k in top)
    assert abs(sum(top.values())) <= 1 + 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and CHROMEDRIVER),
                    reason="Chromium / chromedriver not installed (test.sh installs Debian's chromium and "
                           "chromium-driver where apt-get can run)")
def test_paligemma_app_in_a_headless_browser(folders, tmp_path, monkeypatch):
    """Upload an image, pick "detect", type an object, press Run: the page shows the model's text (the same as the
    processor + generate give) and the image with the decoded objects drawn."""
    pytest.importorskip("gradio")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from big_vision_hf.app import build_app, predictor

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    start = time.time()
    expected, _ = predictor(folders["paligemma"])[1](_image(), "detect", "cat")
    demo = build_app(folders["paligemma"])
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    path = str(tmp_path / "cat.png")
    _image().save(path)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 40)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
        driver.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(path)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))  # the upload is shown
        driver.find_element(By.XPATH, "//*[@id='task']//label[contains(., 'detect')]").click()
        driver.find_element(By.CSS_SELECTOR, "#text textarea, #text input").send_keys("cat")
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#output-text textarea").get_attribute("value"))
        assert driver.find_element(By.CSS_SELECTOR, "#output-text textarea").get_attribute("value") == expected
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#output-image img"))
        driver.save_screenshot(str(tmp_path / "app.png"))
    finally:
        driver.quit()
        demo.close()
    print(f"browser test: {time.time() - start:.1f} s")
