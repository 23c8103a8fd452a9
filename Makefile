# Every target runs in the project's .venv (created by scripts/install.sh with
# $(PYTHON), default python3, the first time; reused after that).
.PHONY: demo test demo-reset lint

demo:        ## run the example rows on this machine (Ctrl-C to stop)
	scripts/demo.sh

test:        ## install test dependencies and run the whole test suite
	scripts/test.sh

demo-reset:  ## put the example workbook back as committed and forget its runs
	git checkout -- examples/local/experiments.xlsx
	rm -rf examples/local/.state

lint:        ## ruff check ., ruff format --check sheetrunner and mypy (CI runs it)
	scripts/lint.sh
