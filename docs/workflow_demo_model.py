"""The scripted Messages API of docs/workflow-demo.sh: three steps' replies (backend, frontend, testing)."""
import os
import sys
import time

sys.path.insert(0, os.environ["ROOT"])  # the checkout: the demo runs the fake server the tests use
from tests.fakes.anthropic_server import FakeAnthropic, tool_use  # noqa: E402
from tests.sample_repo import fixing_script  # noqa: E402

PAGE = "<!doctype html>\n<title>calc</title>\n<p>2 + 3 = <output>5</output></p>\n"
NEGATIVES = ("import unittest\n\nfrom calc import add\n\n\nclass Negatives(unittest.TestCase):\n"
             "    def test_negatives(self):\n        self.assertEqual(add(-2, -3), -5)\n")
script = [*fixing_script(),
          tool_use("write_file", {"path": "ui/index.html", "content": PAGE}),
          tool_use("finish", {"summary": "Added `ui/index.html`, a page that shows a sum."}),
          tool_use("write_file", {"path": "tests/test_negatives.py", "content": NEGATIVES}),
          tool_use("finish", {"summary": "Added a test for negative numbers."})]
with FakeAnthropic(script) as model:
    print(model.base_url, flush=True)
    while True:
        time.sleep(3600)
