"""The search page in a real headless browser (Debian's chromium + chromedriver, driven by selenium).

A demo index (the 100 demo test images, the shared tiny VSE run of tests/conftest.py) is served by search/app.py on
a free loopback port. The page must show the same ranking as the library (search/query.py), with the true image of
a demo caption among the results, load every thumbnail, answer an uploaded image and "more like this" with that
image first and the captions ranked as the library ranks them, and put error messages into the page.
"""
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from scripts import build_index
from search.app import create_app, running
from search.query import Searcher

DEMO = Path("data/demo_precomp")
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1000"]
K = 10
WAIT = 20  # seconds an explicit wait may take before the test fails


@pytest.fixture(scope="module")
def demo(tiny_vse_run, tmp_path_factory):
    """(searcher, image folder, names in file order, captions) over the 100 demo test images."""
    names = list(dict.fromkeys((DEMO / "test_filename.txt").read_text().split()))
    caps = (DEMO / "test_caps.txt").read_text().splitlines()
    root = tmp_path_factory.mktemp("serve_images")
    for n in names:
        shutil.copy(DEMO / "images" / n, root / n)
    out = tmp_path_factory.mktemp("serve_idx") / "index"
    assert build_index.main(["--resume", str(tiny_vse_run / "best.pth"), "--images", str(root), "--out", str(out),
                             "--workers", "0", "--device", "cpu", "--quiet"]) == 0
    return Searcher.open(out, captions=caps), root, names, caps


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(demo, browser):
    """The browser on the served page, the index facts shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with running(create_app(demo[0])) as url:
        browser.get(url + "/")
        WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#facts dd"))
        browser.base = url
        yield browser


def drawn_count(driver) -> int:
    """How many result grids the page has drawn so far."""
    return int(driver.execute_script("return document.getElementById('grid').dataset.seq || '0'"))


def wait_results(driver, seq: int) -> list[str]:
    """Wait until the page has drawn its ``seq``-th result grid with every thumbnail loaded; its file names."""
    from selenium.webdriver.support.ui import WebDriverWait

    def drawn(d):
        return d.execute_script(
            "const g = document.getElementById('grid');"
            "if (g.dataset.state !== 'done' || g.dataset.seq !== arguments[0]) return null;"
            "const imgs = [...g.querySelectorAll('.card img')];"
            "if (!imgs.every((i) => i.complete)) return null;"
            "return imgs.map((i) => [i.closest('.card').dataset.file, i.naturalWidth]);", str(seq))

    cards = WebDriverWait(driver, WAIT).until(drawn)
    assert all(width > 0 for _, width in cards), cards  # every thumbnail was served and decoded
    return [f for f, _ in cards]


def wait_message(driver) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(
        lambda d: d.find_element(By.ID, "msg").is_displayed() and d.find_element(By.ID, "msg").text)


def test_facts_shown(page, demo):
    from selenium.webdriver.common.by import By

    facts = dict(zip([e.text for e in page.find_elements(By.CSS_SELECTOR, "#facts dt")],
                     [e.get_attribute("title") for e in page.find_elements(By.CSS_SELECTOR, "#facts dd")]))
    meta = demo[0].index.meta
    assert facts == {"model": "vse", "checkpoint": meta["checkpoint_path"], "images": "100", "index": "flat",
                     "dim": str(meta["dim"]), "captions": "500"}


def test_text_query_shows_the_true_image(page, demo):
    """Acceptance: type a demo caption, the grid shows the library's ranking with the caption's true image in it."""
    from selenium.webdriver.common.by import By

    searcher, _, names, caps = demo
    # the first test caption whose true image (five captions per image, in file order) the model ranks in the top K
    caption, truth, expected = next((c, names[i // 5], [h.file for h in searcher.text(c, K)])
                                    for i, c in enumerate(caps) if names[i // 5] in
                                    {h.file for h in searcher.text(c, K)})
    seq = drawn_count(page) + 1
    k = page.find_element(By.ID, "k")
    k.clear()
    k.send_keys(str(K))
    page.find_element(By.ID, "q").send_keys(caption)
    page.find_element(By.ID, "go").click()
    shown = wait_results(page, seq)
    assert shown == expected and truth in shown
    assert page.find_element(By.ID, "title").text == f"{K} results: {caption}"
    ranks = [e.text for e in page.find_elements(By.CSS_SELECTOR, "#grid .rank")]
    assert ranks == [f"#{r}" for r in range(1, K + 1)]
    scores = [float(e.text) for e in page.find_elements(By.CSS_SELECTOR, "#grid .score")]
    assert scores == sorted(scores, reverse=True)
    link = page.find_element(By.CSS_SELECTOR, f'#grid .card[data-file="{truth}"] a').get_attribute("href")
    assert link.endswith(f"/image/{truth}")  # click for the full image


def test_image_query_and_more_like_this(page, demo):
    from selenium.webdriver.common.by import By

    searcher, root, names, _ = demo
    query = names[7]
    seq = drawn_count(page) + 1
    page.find_element(By.ID, "upload").send_keys(str(root / query))
    shown = wait_results(page, seq)
    assert shown[0] == query and len(shown) == K  # the image itself is its best match
    emb = searcher.stored(searcher.rows[query])
    assert [c.text for c in page.find_elements(By.CSS_SELECTOR, "#captions .caption")] == \
        [c for _, c in searcher.captions(emb, K)]
    second = shown[1]
    page.find_element(By.CSS_SELECTOR, f'#grid .card[data-file="{second}"] .like').click()
    again = wait_results(page, seq + 1)
    assert again[0] == second and again == [h.file for h in searcher.similar(searcher.stored(
        searcher.rows[second]), K)]


def test_errors_are_messages_in_the_page(page):
    from selenium.webdriver.common.by import By

    q = page.find_element(By.ID, "q")
    q.clear()
    page.find_element(By.ID, "go").click()
    assert wait_message(page) == "empty query: type a sentence describing the images you look for"
    q.send_keys("?!")  # passes the page's own check; the server refuses it
    page.find_element(By.ID, "go").click()
    assert wait_message(page) == "the query has no words: type a sentence describing the images you look for"
    assert "Traceback" not in page.page_source


def test_search_address_runs_on_load(page, demo):
    """A search's address (?q=...&k=...) can be shared: loading it runs the same search."""
    from selenium.webdriver.common.by import By

    searcher, _, _, caps = demo
    page.get(f"{page.base}/?{urlencode({'q': caps[42], 'k': 4})}")
    assert wait_results(page, 1) == [h.file for h in searcher.text(caps[42], 4)]
    page.find_element(By.ID, "q").clear()
    page.find_element(By.ID, "q").send_keys(caps[3])
    page.find_element(By.ID, "go").click()
    assert wait_results(page, 2) == [h.file for h in searcher.text(caps[3], 4)]
    assert parse_qs(urlsplit(page.current_url).query) == {"q": [caps[3]], "k": ["4"]}
