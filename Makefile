# Thin wrappers over scripts/dev.sh (which works without make, too).
.PHONY: app test setup models eval
app:
	bash scripts/dev.sh app
test:
	bash scripts/dev.sh test
setup:
	bash scripts/dev.sh setup
# Re-create the shipped weights of the embedded default (see README for timings on 2 cores).
models: setup
	.venv/bin/python -m core train-vae --seed 0
	.venv/bin/python -m core train-teacher --seed 0
	.venv/bin/python -m core train-flow --seed 0 --no-resume
	.venv/bin/python -m core eval-models --seed 0 --json assets/metrics.json
eval: setup
	.venv/bin/python -m core eval-models --seed 0
