# Trains the example's model: a logistic regression (R's glm, binomial) of graduate-school
# admission on a GRE score, a GPA and the undergraduate institution's rank (1 to 4, a factor),
# fitted on 400 synthetic applicants drawn with a fixed seed. Writes, into the version folder:
#   model.rds   the fitted glm (saveRDS)
#   shoal.R     a copy of the R wrapper (wrappers/r/shoal.R), which model.yaml runs
# Both are built files (see .gitignore); run this again to rebuild them.
#
# Usage: Rscript build.R [REPOSITORY]   (default: the models/ folder beside this script)

args <- commandArgs(trailingOnly = FALSE)
script <- normalizePath(sub("^--file=", "", args[startsWith(args, "--file=")][1]))
here <- dirname(script)
given <- commandArgs(trailingOnly = TRUE)
repository <- if (length(given)) given[1] else file.path(here, "models")
version_dir <- file.path(repository, "r-glm", "1")
dir.create(version_dir, recursive = TRUE, showWarnings = FALSE)

set.seed(20240611)
n <- 400
applicants <- data.frame(
  gre = round(pmin(800, pmax(220, rnorm(n, 580, 115))), -1),
  gpa = round(pmin(4, pmax(2.2, rnorm(n, 3.39, 0.38))), 2),
  rank = sample(1:4, n, replace = TRUE, prob = c(0.15, 0.38, 0.30, 0.17))
)
logit <- -3.4 + 0.0023 * applicants$gre + 0.8 * applicants$gpa - 0.55 * (applicants$rank - 1)
applicants$admit <- rbinom(n, 1, plogis(logit))

model <- glm(admit ~ gre + gpa + factor(rank), family = binomial, data = applicants)
saveRDS(model, file.path(version_dir, "model.rds"))
wrapper <- file.path(here, "..", "..", "..", "wrappers", "r", "shoal.R")
stopifnot(file.copy(wrapper, file.path(version_dir, "shoal.R"), overwrite = TRUE))
message(sprintf("built %s (coefficients: %s)", normalizePath(file.path(version_dir, "model.rds")),
                paste(sprintf("%s=%.4g", names(coef(model)), coef(model)), collapse = ", ")))
