"""The documentation: the site builds with `mkdocs build --strict`, its pages open from file:// in a real
headless Chromium and link to each other, and no page talks about how the project was built."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Three pages, by path in the built site, and the heading each must show.
PAGES = {"index.html": "dccnext", "getting-started.html": "Getting started", "commands/train.html": "dccnext train"}


def test_no_page_speaks_of_how_the_project_was_built():
    found = []
    for doc in DOCUMENTS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if re.search(r"session|issue [0-9]", line.replace("InferenceSession", ""), re.I):
                found.append(f"{doc.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_readme_is_a_landing_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 220
    assert "--index-url" in text  # the CPU-wheel hint
    runs = set(re.findall(r"runs/[\w.-]+", text))
    assert runs == {"runs/quickstart"}, runs  # one run folder throughout
    code = "".join(re.findall(r"```\w*\n(.*?)```", text, re.S))
    assert "--overwrite" not in code and "-o docs/" not in code  # no example replaces a file of the repository


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason='the docs extra builds the site: pip install -e ".[docs]"')
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_the_site_builds_strict_with_every_page(site):
    for page in PAGES:
        assert (site / page).is_file(), page
    api = (site / "python.html").read_text()
    assert "from_checkpoint" in api and "use_operator_settings" in api  # mkdocstrings rendered the API


def test_built_pages_open_from_file_urls_and_link_to_each_other(site):
    from tests.viz.test_explorer import NO_BROWSER, start_chrome, stop_chrome

    if NO_BROWSER:
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)")
    from selenium.webdriver.common.by import By

    driver = start_chrome()
    try:
        for page, heading in PAGES.items():
            driver.get((site / page).as_uri())
            assert heading in driver.find_element(By.CSS_SELECTOR, "article h1").text, page
        driver.get((site / "getting-started.html").as_uri())  # its first link into the command pages
        link = driver.find_element(By.CSS_SELECTOR, "article a[href$='commands/train.html']")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)  # clear of the sticky header
        link.click()
        assert driver.current_url == (site / "commands/train.html").as_uri()
        assert "dccnext train" in driver.find_element(By.CSS_SELECTOR, "article h1").text
        # and back through the navigation of that page
        driver.get(driver.find_element(By.CSS_SELECTOR, "a.md-nav__link[href$='getting-started.html']")
                   .get_attribute("href"))
        assert "Getting started" in driver.find_element(By.CSS_SELECTOR, "article h1").text
    finally:
        stop_chrome(driver)
