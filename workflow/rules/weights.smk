# Published weights, downloaded once into the user's cache (CPSNAKE_CACHE, default ~/.cache/cpsnake;
# size and sha256 checked) and linked into resources/weights/. No download when the cache holds a
# verified copy; no job at all when the model is a path, is bundled in resources/models/, or is
# already in resources/weights/.


rule weights:
    output:
        f"{workflow_args.WEIGHTS_FOLDER}/{{name}}",
    log:
        f"{RESULTS}/logs/weights/{{name}}.log",
    wildcard_constraints:
        name="|".join(workflow_args.DOWNLOADABLE),
    conda:
        "../../envs/cpsnake.yaml"
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        cpsnake=CPSNAKE,
    shell:
        '(src=$({params.cpsnake} weights fetch --quiet {wildcards.name}) && echo "$src"'
        ' && (ln -f "$src" {output:q} || cp "$src" {output:q})) > {log:q} 2>&1'
