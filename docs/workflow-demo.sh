#!/usr/bin/env bash
# A three-specialty issue from its labels to one PR on `forgecrew up` (local forge, scripted model).
# bash docs/workflow-demo.sh  (after the quick start's install; DEMO=dir keeps its files there)
set -euo pipefail
DEMO=${DEMO:-$(mktemp -d -t forgecrew-workflow-demo.XXXXXX)}
export ROOT=$(cd "$(dirname "$0")/.." && pwd) DEMO
export FORGECREW_HOME=$DEMO/home PATH=$ROOT/.venv/bin:$PATH PYTHONPATH=$ROOT
export FORGECREW_ANTHROPIC_API_KEY=sk-ant-api03-fake-test-key-000000000000
rm -rf "$DEMO/home" "$DEMO/calc" && mkdir -p "$DEMO"
python "$ROOT/docs/workflow_demo_model.py" > "$DEMO/model.log" 2>&1 & MODEL=$!
sleep 2; export FORGECREW_ANTHROPIC_BASE_URL=$(head -1 "$DEMO/model.log")
forgecrew up --port 8765 --no-flower > "$DEMO/up.log" 2>&1 & UP=$!
trap 'kill -INT $UP 2>/dev/null; wait $UP 2>/dev/null; kill $MODEL 2>/dev/null' EXIT
until curl -sf http://127.0.0.1:8765/readyz > /dev/null; do
  kill -0 $UP 2>/dev/null || { tail -n 30 "$DEMO/up.log"; exit 1; }; sleep 1
done
echo "\$ forgecrew up --port 8765 --no-flower   (ready; model at $FORGECREW_ANTHROPIC_BASE_URL)"
# the local forge has no issue tracker of its own: seed the repository and issue 1
python - <<'PY'
import os
from pathlib import Path
from common.forge.local import LocalForge
from common.settings import Settings
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, write_sample
forge = LocalForge(Settings())
forge.create_repo("acme/calc", write_sample(Path(os.environ["DEMO"]) / "calc"))
forge.create_issue("acme/calc", 1, ISSUE_TITLE, ISSUE_BODY + " Show a sum on a page, and test negatives.",
                   labels=("forgecrew:backend", "forgecrew:frontend", "forgecrew:testing"))
PY
SECRET=$(cat "$FORGECREW_HOME/secrets/webhook_secret")
# three issues.labeled deliveries, one label each, as GitHub sends them when a person adds three labels
labels=()
for label in forgecrew:backend forgecrew:frontend forgecrew:testing; do
  labels+=("$label")
  BODY=$(LABEL=$label LABELS="${labels[*]}" python - <<'PY'
import json, os
from tests.support import labeled_issue
from tests.sample_repo import ISSUE_TITLE, ISSUE_BODY
data = labeled_issue(os.environ["LABEL"], repo="acme/calc", number=1, title=ISSUE_TITLE, body=ISSUE_BODY)
data["issue"]["labels"] = [{**data["label"], "name": name} for name in os.environ["LABELS"].split()]
print(json.dumps(data))
PY
)
  SIG=sha256=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET" -r | cut -d' ' -f1)
  echo "\$ curl -X POST http://127.0.0.1:8765/webhooks/github  (issues.labeled $label, signed)"
  curl -s -X POST http://127.0.0.1:8765/webhooks/github -H "Content-Type: application/json" \
       -H "X-GitHub-Event: issues" -H "X-GitHub-Delivery: demo-$label" -H "X-Hub-Signature-256: $SIG" --data "$BODY"; echo
  sleep 0.3
done
SECONDS=0
until forgecrew tasks list --json | python -c "import json,sys; sys.exit(json.load(sys.stdin)[0]['state'] not in ('pr_open','failed'))"; do sleep 1; done
echo "(pr_open after ${SECONDS}s)"
echo "\$ forgecrew tasks show 1"; forgecrew tasks show 1
echo "\$ git log main..forgecrew/issue-1-add-subtracts-instead-of-adding"
git --git-dir "$FORGECREW_HOME/forge/acme/calc.git" log --format='%h %s%n%b' main..forgecrew/issue-1-add-subtracts-instead-of-adding | grep -v '^$'
echo "\$ the PR (local forge)"
python -c "import json; [print(p['title'], '\n' + p['body']) for p in json.load(open('$FORGECREW_HOME/forge/acme/calc.forgecrew/pulls.json'))]"
