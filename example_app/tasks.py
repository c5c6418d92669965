"""The demo's jobs: each subclasses ``JobtasticTask`` and registers itself.

Start them on the class, e.g. ``LotsOfDivisionTask.delay_or_fail(numerators=[...],
denominators=[...])``; the web process and the worker both import this module.
``RenderFileTask`` and ``ZipFilesTask`` are the parts of a chord, started as one
job with ``canvas_or_fail`` (see ``views.start_batch``).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import random
import time
import zipfile
from datetime import date, timedelta
from typing import Any

from flask_jobtastic import JobFailed, JobtasticTask

#: Regions and years the CSV report accepts.
REGIONS = ("north", "south", "east", "west")
YEARS = tuple(range(2019, 2026))

_PRODUCTS = (
    ("Espresso beans 1 kg", 18.50),
    ("Filter papers x100", 4.20),
    ("Ceramic mug", 9.90),
    ("Hand grinder", 54.00),
    ("Milk frother", 32.75),
    ("Cold brew bottle", 21.40),
    ("Descaler 500 ml", 7.80),
)


class LotsOfDivisionTask(JobtasticTask):
    """Divide each numerator by its denominator, slowly enough to watch the bar."""

    significant_kwargs = [("numerators", str), ("denominators", str)]
    herd_avoidance_timeout = 60
    cache_duration = 0  # the answer never changes: cache it forever
    #: Seconds the whole job takes, whatever the number of pairs.
    run_seconds = 6.0

    def calculate_result(self, numerators: list[int], denominators: list[int]) -> list[float]:
        if len(numerators) != len(denominators):
            raise JobFailed("Give as many numerators as denominators.")
        total = len(numerators)
        pause = self.run_seconds / total if total else 0.0
        quotients: list[float] = []
        for count, (numerator, denominator) in enumerate(
            zip(numerators, denominators, strict=True), start=1
        ):
            # A zero denominator raises ZeroDivisionError: the user sees the
            # generic message with an error id, the log gets the traceback.
            quotients.append(round(numerator / denominator, 6))
            self.update_progress(count, total, update_frequency=10)
            time.sleep(pause)
        return quotients


class CsvReportTask(JobtasticTask):
    """A year of fake sales for one region, as CSV text for the browser to download."""

    significant_kwargs = ["region", "year"]
    herd_avoidance_timeout = 120
    cache_duration = 300
    rows = 300
    #: Seconds spent on each row, so the report takes about 15 s.
    row_seconds = 0.05

    def calculate_result(self, region: str, year: int) -> dict[str, Any]:
        if region not in REGIONS:
            raise JobFailed(f"Unknown region {region!r}: pick one of {', '.join(REGIONS)}.")
        year = int(year)
        rng = random.Random(f"{region}:{year}")  # same arguments, same report
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(
            ["order_id", "date", "region", "product", "quantity", "unit_price", "total"]
        )
        first_day = date(year, 1, 1)
        revenue = 0.0
        for row in range(1, self.rows + 1):
            product, price = rng.choice(_PRODUCTS)
            quantity = rng.randint(1, 12)
            day = first_day + timedelta(days=rng.randrange(365))
            line_total = round(quantity * price, 2)
            revenue += line_total
            writer.writerow(
                [
                    f"{region[0].upper()}{year % 100:02d}-{row:05d}",
                    day.isoformat(),
                    region,
                    product,
                    quantity,
                    f"{price:.2f}",
                    f"{line_total:.2f}",
                ]
            )
            self.update_progress(row, self.rows, update_frequency=5)
            time.sleep(self.row_seconds)
        return {
            "filename": f"sales-{region}-{year}.csv",
            "rows": self.rows,
            "revenue": round(revenue, 2),
            "csv": out.getvalue(),
        }


class FlakyImportTask(JobtasticTask):
    """Imports a customer file and stops at a bad row with a message for the user."""

    significant_kwargs = ["filename"]
    herd_avoidance_timeout = 30
    bad_row = 42
    row_seconds = 0.07

    def calculate_result(self, filename: str = "customers.csv") -> dict[str, Any]:
        total = 100
        for row in range(1, total + 1):
            time.sleep(self.row_seconds)
            if row == self.bad_row:
                raise JobFailed(f"Row {row}: the 'email' column is empty")
            self.update_progress(row, total, update_frequency=5)
        return {"filename": filename, "imported": total}  # never reached in the demo


class MultiStepTask(JobtasticTask):
    """Checks a batch of orders in named steps, with messages and item counts."""

    significant_kwargs = ["batch"]
    herd_avoidance_timeout = 60
    steps = [
        ("fetch", "Fetch the orders"),
        ("check", "Check each order"),
        ("write", "Write the summary"),
    ]
    track_state = True
    description = "Check today's orders"
    orders = 24
    #: Orders (by position) that fail the check on purpose.
    bad_orders = frozenset({5, 13, 19})
    pause = 0.25

    def calculate_result(self, batch: str = "today") -> dict[str, Any]:
        orders = [f"{batch}-order-{n:03d}" for n in range(1, self.orders + 1)]
        with self.step("Fetch the orders", key="fetch"):
            self.notify(f"Connecting to the order store for batch {batch!r}")
            for page in range(1, 5):
                time.sleep(self.pause * 2)
                self.update_step(f"Page {page} of 4")
            self.notify(f"Fetched {len(orders)} orders")

        failed: list[str] = []
        with self.step("Check each order", key="check"):
            self.set_amount(len(orders))
            for position, order in enumerate(orders, start=1):
                time.sleep(self.pause)
                if position in self.bad_orders:
                    failed.append(order)
                    self.add_one_failure(order)
                else:
                    self.add_one_success(order)
            self.notify(f"{len(failed)} of {len(orders)} orders failed the check")
            with self.step("Retry the failed ones", key="retry", continue_on_error=True):
                self.notify("Retrying the failed orders once")
                time.sleep(self.pause * 4)
                raise ConnectionError("The payment service did not answer")
        # No self.raise_latest_exception(): the job succeeds with the failed
        # retry step on record.

        with self.step("Write the summary", key="write"):
            time.sleep(self.pause * 4)
            self.notify("Summary written")
        return {
            "batch": batch,
            "checked": len(orders),
            "passed": len(orders) - len(failed),
            "failed": failed,
        }


#: The files the batch card renders, with their pages: each is a part of its own.
BATCH_FILES = (
    ("welcome-letter.md", 3),
    ("invoice-0141.md", 6),
    ("price-list.md", 10),
    ("shipping-notes.md", 5),
    ("returns-policy.md", 4),
    ("catalogue.md", 12),
    ("invoice-0142.md", 4),
    ("terms.md", 8),
)

_WORDS = ("beans", "roast", "grind", "brew", "filter", "order", "parcel", "label", "price", "blend")


class RenderFileTask(JobtasticTask):
    """Renders one text file to an HTML page, a page at a time: a part of the batch.

    Cached for five minutes: the same file in another batch is not rendered again.
    """

    significant_kwargs = ["filename", "pages"]
    herd_avoidance_timeout = 60
    cache_duration = 300
    #: Seconds spent on each page.
    page_seconds = 0.25

    def calculate_result(self, filename: str, pages: int) -> dict[str, Any]:
        pages = int(pages)
        if pages < 1:
            raise JobFailed(f"{filename} has no pages to render.")
        rng = random.Random(filename)  # same file, same text
        title = html.escape(filename.rsplit(".", 1)[0].replace("-", " ").capitalize())
        body = [f"<h1>{title}</h1>"]
        for page in range(1, pages + 1):
            time.sleep(self.page_seconds)
            words = " ".join(rng.choice(_WORDS) for _ in range(60))
            body.append(f'<section class="page"><h2>Page {page}</h2><p>{words}.</p></section>')
            self.update_progress(page, pages)
        document = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body>{''.join(body)}</body></html>"
        )
        return {"filename": filename.rsplit(".", 1)[0] + ".html", "pages": pages, "html": document}


class ZipFilesTask(JobtasticTask):
    """The batch's last part: zips what every ``RenderFileTask`` rendered, in order."""

    herd_avoidance_timeout = 60

    def calculate_result(
        self, rendered: list[dict[str, Any]], archive: str = "rendered.zip"
    ) -> dict[str, Any]:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
            for count, item in enumerate(rendered, start=1):
                zipped.writestr(item["filename"], item["html"])
                self.update_progress(count, len(rendered))
        data = buffer.getvalue()
        return {
            "filename": archive,
            "files": [item["filename"] for item in rendered],
            "pages": sum(int(item["pages"]) for item in rendered),
            "bytes": len(data),
            "zip_base64": base64.b64encode(data).decode("ascii"),
        }
