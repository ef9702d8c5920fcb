"""The viewer's pages in a real headless browser: Debian's chromium driven by
Playwright's Python package. Screenshots go to the test's tmp_path."""

import json

import pytest
from playwright.sync_api import expect, sync_playwright

import view_helpers as vh

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def preds(view_root, tmp_path_factory):
  rows = vh.jsonl_rows(view_root / "tier1" / "eval" / "len_8.jsonl")
  out = [vh.corrupt_value(r, i) if i == 1 else vh.prediction(r, index=i)
         for i, r in enumerate(rows)]
  return vh.write(tmp_path_factory.mktemp("bpreds") / "p.jsonl", out)


@pytest.fixture(scope="module")
def site(view_root, preds):
  with vh.running([view_root], [preds]) as (base, app):
    yield base, app


@pytest.fixture(scope="module")
def browser():
  with sync_playwright() as p:
    b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    yield b
    b.close()


@pytest.fixture
def page(browser):
  pg = browser.new_page(viewport={"width": 1300, "height": 900})
  errors = []
  pg.on("pageerror", lambda e: errors.append(str(e)))
  yield pg
  pg.close()
  assert not errors, errors


def _tier2_ds(app) -> int:
  return next(d.number for d in app.datasets if d.tier == "tier2")


def test_step_to_a_push_shows_registers_and_stack(site, page, view_root,
                                                  tmp_path):
  base, app = site
  rows = vh.jsonl_rows(view_root / "tier2" / "eval" / "hard.jsonl")
  i, row = next((i, r) for i, r in enumerate(rows)
                if any(p["op"] == "PUSH" for p in r["program"]))
  steps = row["trace"]["steps"]
  t = next(t for t, s in enumerate(steps)
           if row["program"][s["pc"]]["op"] == "PUSH")
  ds = _tier2_ds(app)
  start = max(0, t - 4)
  page.goto(f"{base}#/row?ds={ds}&group=eval/hard&i={i}&step={start}")
  expect(page.get_by_test_id("position")).to_have_text(
      f"step {start} / {len(steps)}")
  for _ in range(t + 1 - start):     # the keys step forward
    page.keyboard.press("ArrowRight")
  expect(page.get_by_test_id("position")).to_have_text(
      f"step {t + 1} / {len(steps)}")
  expect(page.locator(".program .ln.current")).to_have_attribute(
      "data-line", str(steps[t]["pc"]))
  for r in range(8):
    expect(page.get_by_test_id(f"reg-{r}").locator(".val")).to_have_text(
        str(steps[t]["regs"][r]))
  cells = page.get_by_test_id("stack-cell").locator("span:first-child")
  expect(cells).to_have_text([str(v) for v in steps[t]["stack"]])
  page.screenshot(path=str(tmp_path / "push.png"), full_page=True)
  page.keyboard.press("ArrowLeft")
  expect(page.get_by_test_id("position")).to_have_text(
      f"step {t} / {len(steps)}")
  page.keyboard.press("r")
  expect(page.get_by_test_id("position")).to_have_text(
      f"step 0 / {len(steps)}")
  expect(page.get_by_test_id("renders")).to_contain_text("cot")


def test_playground_diagnostic_on_its_line(site, page, tmp_path):
  base, _ = site
  page.goto(f"{base}#/play")
  editor = page.get_by_test_id("editor")
  expect(page.get_by_test_id("play-view")).to_contain_text("Registers")
  editor.fill("")
  editor.press_sequentially("LOAD R1 5\nPRINT R1\nADD R2 R1\nHALT\n")
  diag = page.get_by_test_id("diagnostics").locator("li").first
  expect(diag).to_contain_text("line 3, column")
  expect(diag).to_contain_text("operand 3")
  expect(page.get_by_test_id("gutter").locator("div.error")).to_have_text("3")
  page.screenshot(path=str(tmp_path / "playground-error.png"), full_page=True)
  editor.fill("LOAD R1 5\nPRINT R1\nADD R2 R1 R1\nPUSH R2\nHALT\n")
  expect(page.get_by_test_id("diagnostics").locator("li")).to_have_count(0)
  expect(page.get_by_test_id("position")).to_have_text("step 5 / 5")
  expect(page.get_by_test_id("stack-cell")).to_have_text(["10#0"])
  # the URL shares the program
  url = page.url
  assert "#/play?src=" in url
  page.goto("about:blank")
  page.goto(url)
  expect(page.get_by_test_id("position")).to_have_text("step 5 / 5")


def test_compare_anchors_the_first_divergence(site, page, view_root,
                                              tmp_path):
  base, _ = site
  page.goto(f"{base}#/compare")
  expect(page.get_by_test_id("accuracy")).to_contain_text("95.0%")
  page.get_by_test_id("failures").locator("tr.link").first.click()
  anchor = page.get_by_test_id("anchor")
  expect(anchor).to_be_visible()
  expect(anchor).to_be_in_viewport()
  row = vh.jsonl_rows(view_root / "tier1" / "eval" / "len_8.jsonl")[1]
  steps = row["trace"]["steps"]
  printed = next(t for t, s in enumerate(steps) if s["emitted"] is not None)
  expect(page.get_by_test_id("divergence")).to_contain_text(
      f"printed at step {printed + 1}")
  expect(page.get_by_test_id("position")).to_have_text(
      f"step {printed + 1} / {len(steps)}")
  expect(page.locator(".outs .v.now")).to_have_text(
      str(row["trace"]["output"][0]))
  page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)


def test_export_opens_without_a_server(site, page, tmp_path):
  base, app = site
  ds = _tier2_ds(app)
  res = page.request.get(f"{base}api/export?ds={ds}&group=eval/easy&i=0")
  assert res.ok
  path = tmp_path / "row.html"
  path.write_bytes(res.body())
  page.goto(path.as_uri())
  expect(page.get_by_test_id("program")).to_be_visible()
  page.keyboard.press("ArrowRight")
  expect(page.get_by_test_id("position")).to_contain_text("step 1 /")
  page.screenshot(path=str(tmp_path / "export.png"), full_page=True)


def test_browse_filters_and_jumps(site, page, view_root, tmp_path):
  base, _ = site
  page.goto(f"{base}#/browse?ds=0&group=train&k=8")
  rows = vh.jsonl_rows(view_root / "tier1" / "train.jsonl")
  want = sum(r["meta"]["axes"]["k"] == 8 for r in rows)
  expect(page.get_by_test_id("matched")).to_have_text(
      f"{want} of 200 rows match")
  page.screenshot(path=str(tmp_path / "browse.png"), full_page=True)
  page.locator("select[name=kind]").select_option("seed")
  page.get_by_test_id("jump").fill(str(rows[42]["meta"]["seed"]))
  page.get_by_test_id("jump").press("Enter")
  expect(page.get_by_test_id("meta")).to_contain_text("index 42")
  assert json.dumps(rows[42]["trace"]["output"]).replace(" ", "") in (
      page.get_by_test_id("meta").inner_text().replace(" ", ""))
