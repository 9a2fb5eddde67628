# Predictions computed by R itself, without serving: what Shoal's answers are compared with.
#
# Usage: Rscript predict.R MODEL.rds INPUT.json
#   INPUT.json: a V2 inference request whose one input is an [n, 3] tensor of rows
#   (gre, gpa, rank), as input.json beside this script.
# Prints {"predict": [p1, ...]}: each applicant's probability of admission, with 17
# significant digits (the exact doubles).

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 2L) stop("usage: Rscript predict.R MODEL.rds INPUT.json")
model <- readRDS(args[1])
request <- jsonlite::fromJSON(args[2], simplifyVector = FALSE)
tensor <- request$inputs[[1]]
values <- as.numeric(unlist(tensor$data))
rows <- matrix(values, ncol = 3, byrow = TRUE)
applicants <- data.frame(gre = rows[, 1], gpa = rows[, 2], rank = rows[, 3])
p <- predict(model, newdata = applicants, type = "response")
numbers <- structure(paste0("[", paste(sprintf("%.17g", p), collapse = ","), "]"), class = "json")
cat(jsonlite::toJSON(list(predict = numbers), json_verbatim = TRUE), "\n")
