"""Region search in the viewer page, driven by headless Chromium against a real Orthanc + plugin.

The user drags a box around a lesion on the query image; the page runs the region search and
draws each neighbour's matched region on its image, exactly where REST says it is; "Explain"
maps why each region matched. A box outside the image is a readable message in the page and a
400 from REST, and so is a box on a server whose index has no regions. ``results_server`` stores
regions (``"Regions": true``); its archive is phantom v3 (lesions of four kinds) at 128 px. With
``MEDCBIR_SCREENSHOT`` the page with the drawn box and the matched regions is copied there
(docs/viewer.png).
"""

from __future__ import annotations

import csv
import os
import shutil

import pydicom
import pytest

from tests.pacs.browser import Waiter, box_on_screen, drag_box, loaded_images, open_instance

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.chromium]

K = 4


def test_viewer_draws_a_box_and_shows_each_neighbours_matched_region(results_server, lesion_archive, hostile_server, pacs_archive,
                                                                    browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    server = results_server
    assert server.status()["generation"] >= 1
    # the query: the slice with the largest lesion; the box drawn around it with a margin
    lesion = max(csv.DictReader(open(lesion_archive / "lesion-boxes.csv")), key=lambda r: int(r["w"]) * int(r["h"]))
    x, y, w, h = (int(lesion[key]) for key in ("x", "y", "w", "h"))
    box = [max(0, x - 6), max(0, y - 6), w + 12, h + 12]
    instance = server.rest.lookup_sop(lesion["sop_instance_uid"])
    rows, cols = (int(server.rest.tags(instance)[key]) for key in ("Rows", "Columns"))
    assert (rows, cols) == (128, 128)

    wait = Waiter(browser, tmp_path)
    open_instance(browser, wait, server, instance)
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys(str(K))
    Select(browser.find_element(By.ID, "exclude")).select_by_value("same-patient")
    browser.find_element(By.CSS_SELECTOR, f'#instances img[data-instance="{instance}"]').click()
    wait.until(lambda d: loaded_images(d, "#neighbours .card img.thumb") == K and loaded_images(d, "#query .card img.thumb") == 1,
               "the whole-image neighbours")
    assert not browser.find_elements(By.CSS_SELECTOR, ".region-box")  # no box yet: no matched regions

    # draw the box with the mouse: the region search runs on release
    handles = len(browser.window_handles)
    drag_box(browser, browser.find_element(By.CSS_SELECTOR, "#query .card img.thumb"), box)
    wait.until(lambda d: "region matches" in d.find_element(By.ID, "message").text
               and loaded_images(d, "#neighbours .card img.thumb") == K, "the region neighbours")
    assert len(browser.window_handles) == handles  # the drag did not follow the image's link
    drawn = [int(v) for v in browser.find_element(By.ID, "roi").get_attribute("value").split(",")]
    assert drawn == box

    # the page shows what REST answers for that box, each matched region drawn where it is
    answer = server.rest.post("/medcbir/search", json={"instance": instance, "k": K, "exclude": "same-patient", "per_series": 0,
                                                       "roi": drawn}).json()
    assert answer["query_region"] == drawn and len(answer["neighbours"]) == K
    cards = browser.find_elements(By.CSS_SELECTOR, "#neighbours .card")
    assert [c.get_attribute("data-instance") for c in cards] == [n["instance"] for n in answer["neighbours"]]
    boxes = browser.find_elements(By.CSS_SELECTOR, "#neighbours .card .region-box")
    assert [b.get_attribute("data-box") for b in boxes] == [",".join(map(str, n["region"])) for n in answer["neighbours"]]
    for on_screen, n in zip(box_on_screen(browser, "#neighbours .card .region-box"), answer["neighbours"]):
        assert on_screen == pytest.approx(n["region"], abs=0.6)   # drawn on the neighbour's own pixels
    for card, n in zip(cards, answer["neighbours"]):
        x, y, w, h = n["region"]
        assert f"#{n['rank']} · score {n['score']:.4f}" in card.text and f"matched region x {x}, y {y}, {w}×{h} px" in card.text
        assert n["percentile"] is None and "percentile" not in card.text  # region scores have none
    assert box_on_screen(browser, "#query .card .roi-box") == [pytest.approx(drawn, abs=0.6)]

    shot = tmp_path / "viewer-regions.png"
    browser.save_screenshot(str(shot))
    print(f"viewer screenshot: {shot}")
    if os.environ.get("MEDCBIR_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["MEDCBIR_SCREENSHOT"])

    # "Explain" with the box: a map over each neighbour of why its region matched
    Select(browser.find_element(By.ID, "method")).select_by_value("occlusion")
    browser.find_element(By.ID, "explain").click()
    Waiter(browser, tmp_path, timeout=600).until(lambda d: loaded_images(d, "#neighbours .card img.overlay") == K, "the region maps")
    status = browser.find_element(By.ID, "explain-status").text
    assert "region-match occlusion" in status and "not for diagnosis" in status
    # each map is a picture of that neighbour laid exactly over it, its matched box still on top
    sizes = browser.execute_script("return [...document.querySelectorAll('#neighbours .card img.overlay')].map("
                                   "i => [i.naturalWidth, i.naturalHeight, i.nextElementSibling && i.nextElementSibling.className]);")
    assert all(wd % 128 == 0 and wd == ht and nxt == "region-box" for wd, ht, nxt in sizes), sizes

    # a box outside the image: a readable message in the page, a 400 from REST
    outside = [120, 120, 30, 30]
    field = browser.find_element(By.ID, "roi")
    field.clear()
    field.send_keys(",".join(map(str, outside)) + "\n")
    wait.until(lambda d: "region search failed" in d.find_element(By.ID, "message").text, "the error message")
    text = browser.find_element(By.ID, "message").text
    resp = server.rest.post("/medcbir/search", json={"instance": instance, "roi": outside})
    assert resp.status_code == 400 and resp.json()["error"] in text, (resp.text, text)
    assert "error" in browser.find_element(By.ID, "message").get_attribute("class")
    field.clear()
    field.send_keys("12,12,zero\n")
    wait.until(lambda d: "four whole numbers" in d.find_element(By.ID, "message").text, "the box format message")

    # an index without regions (the hostile server's plugin has "Regions": false): a box drawn on
    # the query is the server's one line in the page, and a 400 from REST
    plain = hostile_server
    other = plain.rest.lookup_sop(str(pydicom.dcmread(pacs_archive[12], stop_before_pixels=True).SOPInstanceUID))
    open_instance(browser, wait, plain, other)
    browser.find_element(By.CSS_SELECTOR, f'#instances img[data-instance="{other}"]').click()
    wait.until(lambda d: loaded_images(d, "#query .card img.thumb") == 1 and "neighbours" in d.find_element(By.ID, "message").text,
               "the whole-image search on the server without regions")
    drag_box(browser, browser.find_element(By.CSS_SELECTOR, "#query .card img.thumb"), [10, 12, 20, 16])
    wait.until(lambda d: "region search failed" in d.find_element(By.ID, "message").text, "the no-regions message")
    text = browser.find_element(By.ID, "message").text
    resp = plain.rest.post("/medcbir/search", json={"instance": other, "roi": [10, 12, 20, 16]})
    assert resp.status_code == 400 and "has no regions" in resp.json()["error"] and resp.json()["error"] in text, (resp.text, text)
    assert plain.rest.post("/medcbir/explain", json={"instance": other, "roi": [10, 12, 20, 16]}).status_code == 400
