# Two commands for a fresh clone:  make demo   and   make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE ?= 1
export PYTHONPATH := $(CURDIR)

DEMO_METHODS := full,window,streaming_llm,h2o,kv_compression,topk,adore
# A git-ignored folder, so a fresh clone runs every method for real (a second `make demo` resumes and
# only reprints); `make demo DEMO_DIR=results/demo` refreshes the committed reference.
DEMO_DIR ?= demo
DEMO_ARGS := dataset.limit=8 max_new_tokens=96 method.m=128 results_dir=$(DEMO_DIR)

EVAL_ARGS := dataset.limit=16 max_new_tokens=96 results_dir=results/adore-eval
BUDGETS := 32,64,128

.PHONY: setup demo test lint format adore-eval throughput paper paper-small every-method speed speed-paper ablations small-budget paper-adapter stream-heldout

# Creates the venv once, installs the exact pins (re-installs only when a requirements file
# changes), and converts the embedded model once (verified by hash on every call, ~1 s).
setup: $(STAMP)
	@$(PY) scripts/prepare_assets.py --models-dir models --data-dir data

$(STAMP): requirements.txt requirements-nodeps.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	@touch $(STAMP)

demo: setup
	@echo "demo: 7 methods at m=128 on 8 ACLSum papers (96 new tokens) into $(DEMO_DIR)/; ADORE first trains"
	@echo "      its controller on the ACLSum train split (once; saved under artifacts/). Runs with rows resume."
	$(PY) run.py -m method=$(DEMO_METHODS) $(DEMO_ARGS)
	@echo "demo: the table of every run in $(DEMO_DIR)/ (also in $(DEMO_DIR)/table.md)"
	$(PY) run.py task=report results_dir=$(DEMO_DIR)

# ADORE against the baselines at three budgets, R in {0,4,8} (and with the paper-literal labels,
# horizon 1); then at m=64 with the sparse LoRA fine-tune, which every method loads (ADORE trains
# its controller and adapter first when missing).
adore-eval: setup
	$(PY) run.py -m method=adore method.m=$(BUDGETS) method.R=0,4,8 $(EVAL_ARGS)
	$(PY) run.py -m method=adore method.labels.horizon=1 method.m=$(BUDGETS) method.R=0,4,8 $(EVAL_ARGS)
	$(PY) run.py method=adore method.m=64 method.R=8 method.slicing=matmul $(EVAL_ARGS)
	$(PY) run.py -m method=h2o,kv_compression,streaming_llm,window method.m=$(BUDGETS) $(EVAL_ARGS)
	$(PY) run.py method=full $(EVAL_ARGS)
	$(PY) run.py -m method=adore method.finetune=true method.m=64 method.R=4,8 $(EVAL_ARGS)
	$(PY) run.py -m method=h2o,kv_compression,streaming_llm,window,full method.m=64 model.adapter=adore:K32 $(EVAL_ARGS)
	$(PY) run.py task=report results_dir=results/adore-eval

# The throughput benchmark committed in results/throughput (2-core CPU; ~30 min): every method at
# batch 1 over context 512..8192 with packing and the step profile; then batch 8 at context 4096.
THROUGHPUT_DIR := results/throughput
throughput: setup
	$(PY) run.py task=throughput 'task.methods=[hf_generate,full,window,streaming_llm,h2o,kv_compression,{name:adore,R:0},{name:adore,R:8},{name:adore,R:0,slicing:matmul}]' 'task.batch_sizes=[1]' task.packing.kv_budget_mb=96 task.packing.max_batch=16 'task.packing.methods=[full,adore]' 'task.profile.methods=[window,adore]' results_dir=$(THROUGHPUT_DIR)
	$(PY) run.py task=throughput 'task.methods=[hf_generate,full,window,{name:adore,R:0}]' 'task.context_lengths=[4096]' 'task.batch_sizes=[8]' task.packing.kv_budget_mb=null task.profile.context_length=null results_dir=$(THROUGHPUT_DIR)

# The speed comparison of issue 16 (one run; about 35 min here, plus ADORE's ACLSum controller the first
# time): batch 1 and 8 at contexts 1024 and 4096, one generate of every method at every point (prefill,
# memory, the rows), then 12 interleaved turns of 3 decode steps of the engine's methods, the
# weight-sweep floor beside every row, every method's speedup over generate, full and window with its
# 95% interval, profiles at batch 1 and 8, packing.
speed: setup
	$(PY) run.py task=throughput 'task.methods=[hf_generate,full,window,h2o,{name:adore,R:0}]' 'task.references=[hf_generate,full,window]' 'task.context_lengths=[1024,4096]' 'task.batch_sizes=[1,8]' task.new_tokens=24 task.repeats=1 task.interleave.turns=12 task.interleave.steps=3 task.packing.kv_budget_mb=96 task.packing.max_batch=16 'task.packing.methods=[full,window,adore]' results_dir=$(THROUGHPUT_DIR)

# The reference results in results/reference (issue 14; resumable: after an interruption, run it
# again and only the missing runs start): every method on ACLSum and ShareGPT (+experiment=paper) and
# GSM8K (+experiment=paper_gsm8k), 64 test samples each, m = 32, 64, 128; three held-out Gutenberg
# works past 8,192 positions (+experiment=paper_stream, paper_stream_adore and paper_stream_adore_long,
# ~5.5 h with the long controller's training) and the sink
# ablation (~30 min); then tables and figures in results/reference/{tables,figures}.
# `make paper-adapter` adds the adapted view.
REFERENCE_DIR := results/reference
paper: setup
	$(PY) run.py -m +experiment=paper results_dir=$(REFERENCE_DIR)
	$(PY) run.py -m +experiment=paper_gsm8k results_dir=$(REFERENCE_DIR)
	$(PY) run.py -m +experiment=paper_stream results_dir=$(REFERENCE_DIR)
	$(PY) run.py -m +experiment=paper_stream_adore results_dir=$(REFERENCE_DIR)
	$(PY) run.py -m +experiment=paper_stream_adore_long results_dir=$(REFERENCE_DIR)
	$(PY) run.py -m +experiment=sink_ablation results_dir=$(REFERENCE_DIR)
	$(PY) run.py task=report results_dir=$(REFERENCE_DIR)

# The workload issue 16's evaluation-speed target is timed on (the reference preset before issue 14:
# 8 samples per dataset, 7 methods, 51 runs), into a scratch folder, so every run decodes; batches as
# large as fit the KV budget (batch_size=auto: same tokens as batch 1). ADORE's controllers come from
# artifacts/ when trained before (6 of them: K=16 for m=32, K=32 above, per dataset); move artifacts/
# away first to time their training too (about 20 of 34 min here).
speed-paper: setup
	rm -rf /tmp/adore-speed-paper
	bash -c 'time $(PY) run.py -m +experiment=paper_n8 batch_size=auto results_dir=/tmp/adore-speed-paper'

# The pipeline in small (~4 min, ~7 with ADORE's training): ACLSum, 4 papers, every method at m=32, 64, 128.
# Every method on ACLSum at m = 32, 64, 128 (the recall methods at K = 32, 64, 128), then the report.
every-method: setup
	$(PY) run.py -m +experiment=every_method results_dir=results/every_method
	$(PY) run.py -m +experiment=every_method method=topk,quest method.K=32,64,128 results_dir=results/every_method
	$(PY) run.py task=report results_dir=results/every_method

paper-small: setup
	$(PY) run.py -m +experiment=paper_small results_dir=results/paper_small
	$(PY) run.py task=report results_dir=results/paper_small

test: setup lint
	$(PY) -m pytest -q tests

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The paper's three ablations (~25 min here, ADORE's controllers trained once): attention sparsity
# (topk_vs_K), KV rebuild (adore_vs_R) and the controller (adore_by_scored_by), into results/ablations;
# and the GRU with the paper's absolute position embedding (adore_by_positions), the evidence for
# our relative default on chats.
ABLATION_DIR := results/ablations
ablations: setup
	$(PY) run.py -m +experiment=ablation_sparsity results_dir=$(ABLATION_DIR)
	$(PY) run.py method=full dataset.limit=8 max_new_tokens=96 batch_size=4 results_dir=$(ABLATION_DIR)
	$(PY) run.py -m +experiment=ablation_rebuild results_dir=$(ABLATION_DIR)
	$(PY) run.py -m +experiment=ablation_controller results_dir=$(ABLATION_DIR)
	$(PY) run.py -m +experiment=ablation_controller method.scorer=oracle method.controller.cell=gru results_dir=$(ABLATION_DIR)
	$(PY) run.py -m +experiment=ablation_controller method.controller.cell=gru method.controller.positions=absolute results_dir=$(ABLATION_DIR)
	$(PY) run.py task=report results_dir=$(ABLATION_DIR)

# Why ADORE trails H2O at m=32 (issue 13), on ACLSum's validation split (tuning, not the test split;
# ~20 min, three controllers trained once): the label size K against m, the training-free uniform
# scorer (method.scorer=oracle) against TOVA, which ranks by the same current attention per head,
# and rebuild and sinks at the best K.
SMALL_DIR := results/small-budget
SMALL_ARGS := dataset.split=val dataset.limit=8 max_new_tokens=96 batch_size=4 results_dir=$(SMALL_DIR)
SMALL_SHAREGPT := dataset=sharegpt dataset.split=val dataset.limit=16 max_new_tokens=96 batch_size=auto results_dir=$(SMALL_DIR)
small-budget: setup
	$(PY) run.py -m method=full,h2o,tova method.m=32 $(SMALL_ARGS)
	$(PY) run.py -m method=adore method.m=32 method.R=0 method.K=8,16,32 $(SMALL_ARGS)
	$(PY) run.py method=adore method.m=32 method.R=0 method.K=32 method.scorer=oracle $(SMALL_ARGS)
	$(PY) run.py -m method=adore method.m=32 method.K=16 method.R=4 method.n_sink=0,4 $(SMALL_ARGS)
	$(PY) run.py -m method=full,h2o,tova method.m=32 $(SMALL_SHAREGPT)
	$(PY) run.py -m method=adore method.m=32 method.R=0,4 $(SMALL_SHAREGPT)
	$(PY) run.py method=adore method.m=32 method.R=0 method.K=16 method.scorer=oracle $(SMALL_SHAREGPT)
	$(PY) run.py -m method=adore method.m=32 method.R=0,4 method.labels.target=accumulated $(SMALL_SHAREGPT)
	$(PY) run.py -m method=adore method.m=32 method.R=0 method.n_recent=16 method.labels.target=accumulated,current $(SMALL_SHAREGPT)
	$(PY) run.py task=report results_dir=$(SMALL_DIR)

# The reference runs again with every method on the same sparse-attention adapter (ADORE's fine-tune,
# trained first on each dataset's train split), beside the base model's rows in results/reference.
paper-adapter: setup
	$(PY) run.py -m task=train method=adore method.finetune=true dataset=aclsum,sharegpt,gsm8k
	$(PY) run.py -m +experiment=paper_adapter results_dir=$(REFERENCE_DIR)
	$(PY) run.py -m +experiment=paper_gsm8k model.adapter=adore:K32 results_dir=$(REFERENCE_DIR)
	$(PY) run.py task=report results_dir=$(REFERENCE_DIR)

# Issue 13's stream check (~55 min): 8,192 tokens of held-out Hamlet at m=128, ADORE's controller
# trained on the other Gutenberg works (32 windows of 2,048 tokens), then the report.
STREAM_DIR := results/stream-heldout
stream-heldout: setup
	$(PY) run.py -m +experiment=stream_heldout method=adore method.K=32 method.train.samples=32 method.train.eval_samples=8 results_dir=$(STREAM_DIR)
	$(PY) run.py -m +experiment=stream_heldout method=adore method.K=32 method.train.max_length=4096 method.train.samples=8 method.train.eval_samples=2 results_dir=$(STREAM_DIR)-4096
	$(PY) run.py -m +experiment=stream_heldout results_dir=$(STREAM_DIR)
	$(PY) run.py task=report results_dir=$(STREAM_DIR)
