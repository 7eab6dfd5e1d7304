// The integration guide's client flow with Spring's RestTemplate and Jackson, as a Spring Boot
// service would run it. Request DTOs are the guide's (camelCase fields); response DTOs read the
// service's snake_case JSON through @JsonNaming. Usage: java SpringClientFlow BASE_URL
// Exits non-zero with a message on the first thing that is not as the guide says.

import com.fasterxml.jackson.annotation.JsonProperty;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.PropertyNamingStrategies;
import com.fasterxml.jackson.databind.annotation.JsonNaming;
import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.springframework.core.io.FileSystemResource;
import org.springframework.http.HttpEntity;
import org.springframework.http.HttpHeaders;
import org.springframework.http.HttpStatus;
import org.springframework.http.MediaType;
import org.springframework.http.ResponseEntity;
import org.springframework.http.converter.FormHttpMessageConverter;
import org.springframework.http.converter.json.MappingJackson2HttpMessageConverter;
import org.springframework.util.LinkedMultiValueMap;
import org.springframework.util.MultiValueMap;
import org.springframework.web.client.HttpClientErrorException;
import org.springframework.web.client.RestTemplate;

public class SpringClientFlow {

    // -- the guide's DTOs (section 3.4), as plain fields instead of Lombok's @Data -------------

    public static class TrainingJobRequest {
        public String modelName;
        public String dataset;
        public String stage = "sft";
        public String finetuningType = "lora";
        public Integer batchSize = 2;
        public Double learningRate = 5e-5;
        public Double epochs = 3.0;
        public Integer loraRank = 8;
        public Integer loraAlpha = 16;
        public Map<String, Object> customConfig;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class TrainingJobResponse {
        public String jobId;
        public String status;
        public String message;
        public String createdAt;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class JobStatusResponse {
        public String jobId;
        public String status;
        public Integer pid;
        public String configPath;
        public Double progress;
        public Double currentLoss;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class JobResumeResponse extends TrainingJobResponse {
        public Map<String, Object> resumedFrom;
    }

    // -- validation and evaluations (not in the guide): camelCase in, snake_case out -----------

    public static class Validation {
        public Double valSize;
        public Integer evalSteps;
    }

    public static class ValidatedJobRequest extends TrainingJobRequest {
        public Validation validation;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class ValidatedJobStatus extends JobStatusResponse {
        public Double evalLoss;
        public Double bestEvalLoss;
        public String bestCheckpoint;
        public Boolean stoppedEarly;
    }

    public static class EvaluationRequest {
        public String dataset;
        public String checkpoint;
        public Integer maxSamples;
        public Boolean baseline;
        public Map<String, Object> generation;
    }

    public static class Figures {  // Jackson's snake_case puts no "_" before a digit: named here
        @JsonProperty("bleu_4") public Double bleu4;
        @JsonProperty("rouge_1") public Double rouge1;
        @JsonProperty("rouge_l") public Double rougeL;
        public Double loss;
        public Double perplexity;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class Comparison {
        public Figures tuned;
        public Figures base;
        public Figures difference;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class EvaluationResponse {
        public String evaluationId;
        public String jobId;
        public String status;
        public String checkpoint;
        public Comparison results;
    }

    // -- deployments (not in the guide): an OpenAI-compatible server of the job's weights ------

    public static class DeploymentRequest {
        public String jobId;
        public String name;
        public Integer maxNewTokens;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class DeploymentResponse {
        public String deploymentId;
        public String status;
        public String model;
        public String baseUrl;
        public String apiKey;
        public Integer requestsServed;
    }

    public static class ModelExportRequest {
        public String jobId;
        public String exportDir;
        public Boolean mergeLora;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class ModelExportResponse {
        public String message;
        public String modelPath;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class JobList {
        public Integer total;
        public List<JobStatusResponse> jobs;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class DatasetResponse {
        public String name;
        public String format;
        public List<String> stages;
        public Integer rows;
        public String sha256;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class HealthResponse {
        public String status;
        public String service;
        public Boolean adapterInitialized;
    }

    // -- the flow ------------------------------------------------------------------------------

    static void check(boolean ok, String what) {
        if (!ok) {
            System.err.println("FAILED: " + what);
            System.exit(1);
        }
        System.out.println("ok: " + what);
    }

    static RestTemplate restTemplate() {
        // As Spring Boot configures Jackson: unknown response fields are ignored.
        ObjectMapper mapper = new ObjectMapper().configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false);
        RestTemplate rest = new RestTemplate();
        rest.setMessageConverters(Arrays.asList(
                new org.springframework.http.converter.StringHttpMessageConverter(),
                new FormHttpMessageConverter(),  // multipart uploads
                new MappingJackson2HttpMessageConverter(mapper)));
        return rest;
    }

    static Map<String, Object> fast() {
        Map<String, Object> custom = new HashMap<>();
        custom.put("cutoff_len", 128);
        custom.put("logging_steps", 1);
        return custom;
    }

    static JobStatusResponse waitFor(RestTemplate rest, String api, String jobId) throws InterruptedException {
        for (int i = 0; i < 600; i++) {
            JobStatusResponse status = rest.getForObject(api + "/jobs/{id}", JobStatusResponse.class, jobId);
            if (Arrays.asList("completed", "failed", "stopped").contains(status.status)) {
                return status;
            }
            Thread.sleep(500);
        }
        throw new IllegalStateException("job " + jobId + " did not finish");
    }

    public static void main(String[] args) throws Exception {
        String api = args[0] + "/api/v1/training";
        RestTemplate rest = restTemplate();

        HealthResponse health = rest.getForObject(api + "/health", HealthResponse.class);
        check("healthy".equals(health.status) && Boolean.TRUE.equals(health.adapterInitialized), "health");

        Map<String, Object> snake = new HashMap<>();
        snake.put("model_name", "tiny-llama");
        snake.put("dataset", "demo_sft");
        snake.put("epochs", 1.0);
        snake.put("custom_config", fast());
        ResponseEntity<TrainingJobResponse> created = rest.postForEntity(api + "/jobs", snake, TrainingJobResponse.class);
        check(created.getStatusCode() == HttpStatus.CREATED && created.getBody().jobId.startsWith("train_"),
              "create with a snake_case body");

        TrainingJobRequest request = new TrainingJobRequest();  // the guide's DTO, sent as camelCase
        request.modelName = "tiny-llama";
        request.dataset = "demo_sft";
        request.epochs = 1.0;
        request.customConfig = fast();
        TrainingJobResponse job = rest.postForObject(api + "/jobs", request, TrainingJobResponse.class);
        check("pending".equals(job.status) && job.createdAt.matches("\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d"),
              "create with the guide's camelCase DTO");

        JobStatusResponse done = waitFor(rest, api, job.jobId);
        check("completed".equals(done.status) && done.progress == 1.0 && done.currentLoss != null
              && done.pid == null && done.configPath.endsWith("training_config.yaml"), "poll to completion");
        check("completed".equals(waitFor(rest, api, created.getBody().jobId).status), "the snake_case job completes");

        // Validation during training, then an evaluation of the best checkpoint next to the base model.
        ValidatedJobRequest validated = new ValidatedJobRequest();
        validated.modelName = "tiny-llama";
        validated.dataset = "demo_sft";
        validated.epochs = 1.0;
        validated.learningRate = 1e-3;
        validated.customConfig = fast();
        validated.validation = new Validation();
        validated.validation.valSize = 0.2;
        validated.validation.evalSteps = 16;
        TrainingJobResponse validatedJob = rest.postForObject(api + "/jobs", validated, TrainingJobResponse.class);
        waitFor(rest, api, validatedJob.jobId);
        ValidatedJobStatus judged = rest.getForObject(api + "/jobs/{id}", ValidatedJobStatus.class, validatedJob.jobId);
        check("completed".equals(judged.status) && judged.evalLoss != null && judged.bestEvalLoss != null
              && judged.bestCheckpoint.startsWith("checkpoint-") && !judged.stoppedEarly,
              "create with validation (camelCase valSize) and read eval_loss and the best checkpoint");
        EvaluationRequest evaluate = new EvaluationRequest();
        evaluate.dataset = "demo_sft";
        evaluate.checkpoint = "best";
        evaluate.maxSamples = 4;
        evaluate.baseline = true;
        evaluate.generation = new HashMap<>();
        evaluate.generation.put("max_new_tokens", 16);
        ResponseEntity<EvaluationResponse> queued = rest.postForEntity(
            api + "/jobs/{id}/evaluations", evaluate, EvaluationResponse.class, validatedJob.jobId);
        check(queued.getStatusCode() == HttpStatus.ACCEPTED && queued.getBody().evaluationId.startsWith("eval_"),
              "post an evaluation: 202 with its id");
        EvaluationResponse evaluation = queued.getBody();
        for (int i = 0; i < 600 && !Arrays.asList("completed", "failed", "stopped").contains(evaluation.status); i++) {
            Thread.sleep(500);
            evaluation = rest.getForObject(api + "/jobs/{id}/evaluations/{eid}", EvaluationResponse.class,
                                           validatedJob.jobId, queued.getBody().evaluationId);
        }
        Comparison figures = evaluation.results;
        check("completed".equals(evaluation.status) && judged.bestCheckpoint.equals(evaluation.checkpoint)
              && figures.tuned.bleu4 != null && figures.base.bleu4 != null && figures.tuned.rougeL != null
              && Math.abs(figures.difference.loss - (figures.tuned.loss - figures.base.loss)) < 1e-4,
              "read the evaluation's figures, tuned and base side by side");

        // Upload a dataset as multipart (a FileSystemResource in a MultiValueMap), then train on it.
        File data = File.createTempFile("spring-upload", ".jsonl");
        StringBuilder rows = new StringBuilder();
        for (int i = 0; i < 12; i++) {
            rows.append("{\"instruction\": \"Say ").append(i).append("\", \"input\": \"\", \"output\": \"")
                .append(i).append("\"}\n");
        }
        Files.write(data.toPath(), rows.toString().getBytes(StandardCharsets.UTF_8));
        MultiValueMap<String, Object> parts = new LinkedMultiValueMap<>();
        parts.add("file", new FileSystemResource(data));
        parts.add("name", "spring_data");
        HttpHeaders multipart = new HttpHeaders();
        multipart.setContentType(MediaType.MULTIPART_FORM_DATA);
        ResponseEntity<DatasetResponse> uploaded = rest.postForEntity(
            api + "/datasets", new HttpEntity<>(parts, multipart), DatasetResponse.class);
        check(uploaded.getStatusCode() == HttpStatus.CREATED && uploaded.getBody().rows == 12
              && "alpaca".equals(uploaded.getBody().format) && uploaded.getBody().sha256.length() == 64,
              "upload a dataset as multipart with a FileSystemResource");
        TrainingJobRequest onUpload = new TrainingJobRequest();
        onUpload.modelName = "tiny-llama";
        onUpload.dataset = "spring_data";
        onUpload.epochs = 1.0;
        onUpload.customConfig = fast();
        TrainingJobResponse uploadJob = rest.postForObject(api + "/jobs", onUpload, TrainingJobResponse.class);
        check("completed".equals(waitFor(rest, api, uploadJob.jobId).status), "a job on the uploaded dataset completes");

        JobList list = rest.getForObject(api + "/jobs", JobList.class);
        check(list.total >= 2 && list.jobs.get(0).jobId != null, "list");

        ModelExportRequest export = new ModelExportRequest();
        export.jobId = job.jobId;
        export.exportDir = "./models/exports/java_model";
        export.mergeLora = true;
        ResponseEntity<ModelExportResponse> exported =
            rest.postForEntity(api + "/jobs/{id}/export", export, ModelExportResponse.class, job.jobId);
        check(exported.getStatusCode().is2xxSuccessful() && exported.getBody().modelPath.endsWith("java_model"),
              "export with merge_lora");

        // Deploy the job's adapter, chat with it as any OpenAI client would (RestTemplate, a bearer
        // key), then stop it: its slot goes back to training.
        DeploymentRequest deploy = new DeploymentRequest();
        deploy.jobId = job.jobId;
        deploy.name = "java-bot";
        deploy.maxNewTokens = 8;
        ResponseEntity<DeploymentResponse> deployed =
            rest.postForEntity(api + "/deployments", deploy, DeploymentResponse.class);
        DeploymentResponse deployment = deployed.getBody();
        check(deployed.getStatusCode() == HttpStatus.CREATED && deployment.apiKey.startsWith("sk-imts-")
              && deployment.baseUrl.endsWith("/v1"), "create a deployment: 201 with base_url and the key");
        DeploymentResponse state = deployment;
        for (int i = 0; i < 600 && !Arrays.asList("ready", "failed", "stopped").contains(state.status); i++) {
            Thread.sleep(500);
            state = rest.getForObject(api + "/deployments/{id}", DeploymentResponse.class, deployment.deploymentId);
        }
        check("ready".equals(state.status) && state.apiKey == null, "the deployment becomes ready; the key is not shown again");
        HttpHeaders bearer = new HttpHeaders();
        bearer.setContentType(MediaType.APPLICATION_JSON);
        bearer.set("Authorization", "Bearer " + deployment.apiKey);
        Map<String, Object> message = new HashMap<>();
        message.put("role", "user");
        message.put("content", "Add three and three.");
        Map<String, Object> chat = new HashMap<>();
        chat.put("model", deployment.model);
        chat.put("messages", Arrays.asList(message));
        chat.put("max_tokens", 8);
        ResponseEntity<Map> answer = rest.postForEntity(
            deployment.baseUrl + "/chat/completions", new HttpEntity<>(chat, bearer), Map.class);
        List<?> choices = (List<?>) answer.getBody().get("choices");
        Map<?, ?> reply = (Map<?, ?>) ((Map<?, ?>) choices.get(0)).get("message");
        check(answer.getStatusCode() == HttpStatus.OK && "assistant".equals(reply.get("role")),
              "chat completions on the deployment with RestTemplate and its key");
        try {
            HttpHeaders noKey = new HttpHeaders();
            noKey.setContentType(MediaType.APPLICATION_JSON);
            rest.postForEntity(deployment.baseUrl + "/chat/completions", new HttpEntity<>(chat, noKey), Map.class);
            check(false, "a call without the key is refused");
        } catch (HttpClientErrorException e) {
            check(e.getStatusCode() == HttpStatus.UNAUTHORIZED, "a call without the key is a 401");
        }
        rest.delete(api + "/deployments/{id}", deployment.deploymentId);
        state = rest.getForObject(api + "/deployments/{id}", DeploymentResponse.class, deployment.deploymentId);
        check("stopped".equals(state.status) && state.requestsServed >= 1, "delete stops it (requests counted)");

        request.epochs = 500.0;
        TrainingJobResponse longJob = rest.postForObject(api + "/jobs", request, TrainingJobResponse.class);
        for (int i = 0; i < 240; i++) {  // training, not just started: the stop then saves a checkpoint
            JobStatusResponse s = rest.getForObject(api + "/jobs/{id}", JobStatusResponse.class, longJob.jobId);
            if ("running".equals(s.status) && s.progress != null && s.progress > 0) break;
            Thread.sleep(500);
        }
        ResponseEntity<String> stopped = rest.postForEntity(api + "/jobs/{id}/stop", null, String.class, longJob.jobId);
        check(stopped.getStatusCode() == HttpStatus.OK, "stop with an empty body");
        check("stopped".equals(rest.getForObject(api + "/jobs/{id}", JobStatusResponse.class, longJob.jobId).status),
              "the stopped job reads as stopped");

        // Resume the stopped job from the checkpoint its stop saved, as a new job; then clean both up.
        ResponseEntity<JobResumeResponse> resumed =
            rest.postForEntity(api + "/jobs/{id}/resume", null, JobResumeResponse.class, longJob.jobId);
        check(resumed.getStatusCode() == HttpStatus.CREATED
              && longJob.jobId.equals(resumed.getBody().resumedFrom.get("job_id"))
              && ((String) resumed.getBody().resumedFrom.get("checkpoint")).startsWith("checkpoint-"),
              "resume a stopped job with an empty body");
        String resumedId = resumed.getBody().jobId;
        for (int i = 0; i < 240; i++) {
            JobStatusResponse s = rest.getForObject(api + "/jobs/{id}", JobStatusResponse.class, resumedId);
            if ("running".equals(s.status) && s.pid != null) break;
            Thread.sleep(500);
        }
        rest.postForEntity(api + "/jobs/{id}/stop", null, String.class, resumedId);
        rest.delete(api + "/jobs/{id}", resumedId);
        rest.delete(api + "/jobs/{id}", longJob.jobId);
        try {
            rest.getForObject(api + "/jobs/{id}", JobStatusResponse.class, longJob.jobId);
            check(false, "a deleted job is gone");
        } catch (HttpClientErrorException e) {
            check(e.getStatusCode() == HttpStatus.NOT_FOUND, "RestTemplate.delete removes finished jobs");
        }

        try {
            rest.getForObject(api + "/jobs/{id}", JobStatusResponse.class, "train_00000000");
            check(false, "404 for an unknown job");
        } catch (HttpClientErrorException e) {
            Map<?, ?> body = new ObjectMapper().readValue(e.getResponseBodyAsString(), Map.class);
            check(e.getStatusCode() == HttpStatus.NOT_FOUND && "not_found".equals(body.get("error")),
                  "404 with the JSON error shape");
        }
        try {
            TrainingJobRequest bad = new TrainingJobRequest();
            bad.modelName = "tiny-llama";
            bad.dataset = "demo_sft";
            bad.batchSize = 0;
            rest.postForObject(api + "/jobs", bad, TrainingJobResponse.class);
            check(false, "400 for a bad batch size");
        } catch (HttpClientErrorException e) {
            Map<?, ?> body = new ObjectMapper().readValue(e.getResponseBodyAsString(), Map.class);
            List<?> errors = (List<?>) body.get("errors");
            check(e.getStatusCode() == HttpStatus.BAD_REQUEST
                  && "batch_size".equals(((Map<?, ?>) errors.get(0)).get("field")), "400 names the field");
        }
        System.out.println("JAVA FLOW OK");
    }
}
