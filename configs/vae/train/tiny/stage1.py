# Tiny stage 1: exactly the ../stage1.py recipe, with the tiny sizes of ./sizes.py (the same for
# every tiny stage; tests/test_configs.py checks that nothing else differs).
_base_ = ["../stage1.py"]

# mmengine's Python configs run as code: ./sizes.py's assignments apply here, over the base.
with open("{{ fileDirname }}/sizes.py", encoding="utf-8") as __sizes:
    exec(__sizes.read())
outputs = "outputs/tiny_stage1"
